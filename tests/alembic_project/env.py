"""Alembic environment of the test project (online mode only)."""

import os

from alembic import context
from sqlalchemy import create_engine, pool

url = os.environ["DBCHAOS_ALEMBIC_URL"]
engine = create_engine(url, poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        version_table=os.environ.get("DBCHAOS_ALEMBIC_VERSION_TABLE", "alembic_version"),
        version_table_schema=os.environ.get("DBCHAOS_ALEMBIC_VERSION_SCHEMA") or None,
    )
    with context.begin_transaction():
        context.run_migrations()
