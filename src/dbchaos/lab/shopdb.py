"""The lab's ``shop`` database: an ordinary owner role, the demo's real migrations, sample rows.

The demo connects as the role ``shop`` (not a superuser), as a real service would: so a
connection-exhaustion fault refuses it like it would refuse your app, and everything the
migrations create belongs to the application's role. dbchaos itself uses the server's
superuser, the way an operator's dbchaos would use a role allowed to lock and rename.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import conninfo, sql

from dbchaos.errors import TargetUnusable
from dbchaos.lab.demo.migrate import upgrade_head
from dbchaos.lab.demo.seed import seed

SHOP_DATABASE = "shop"
SHOP_ROLE = "shop"
#: the target name of the lab's database in the chaos server
TARGET_NAME = "shop"


@dataclass(frozen=True)
class ShopDatabase:
    #: the server's superuser on database ``shop``: dbchaos's target
    admin_dsn: str
    #: the role ``shop`` on database ``shop``: the demo service and its migrations
    app_dsn: str
    #: what ``alembic upgrade head`` printed when the lab created the database
    migration_output: str


def create_shop(server_dsn: str, *, database: str = SHOP_DATABASE, role: str = SHOP_ROLE) -> ShopDatabase:
    """Create the role and the database on the (fresh) server of ``server_dsn``, run the
    demo's ``alembic upgrade head`` as that role, and seed it."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role)))
    admin_dsn = conninfo.make_conninfo(server_dsn, dbname=database)
    app_dsn = conninfo.make_conninfo(server_dsn, dbname=database, user=role)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgrowlocks")  # to see row locks by hand
    run = upgrade_head(app_dsn)
    if not run.ok:
        raise TargetUnusable(
            f"the demo shop's migrations failed (exit code {run.returncode}):\n{run.output}", code="lab_migrate_failed"
        )
    seed(app_dsn)
    return ShopDatabase(admin_dsn, app_dsn, run.output)
