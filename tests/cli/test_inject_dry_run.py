"""``dbchaos inject KIND --dry-run`` as a user runs it: a real process, real PostgreSQL."""

from __future__ import annotations

import json

import psycopg

from tests.cli.test_commands import dbchaos
from tests.helpers import dbchaos_sessions, query, wait_for


def test_dry_run_json_parses_and_holds_nothing(db: str) -> None:
    with psycopg.connect(db, application_name="cron-report") as holder:
        holder.execute("SELECT count(*) FROM items")  # an open transaction holding ACCESS SHARE
        out = dbchaos(
            "inject", "table-lock", "--target", db, "-p", "tables=items", "--for", "30s", "--dry-run", "--json"
        )
        assert out.returncode == 0, out.stderr
        plan = json.loads(out.stdout)
        assert plan["dry_run"] is True and plan["kind"] == "table-lock" and plan["duration_s"] == 30
        assert plan["locks"][0] == {
            "locktype": "relation",
            "mode": "ACCESS EXCLUSIVE",
            "phase": "held",
            "session": "fault",
            "relation": "public.items",
        }
        (party,) = plan["blast_radius"]["in_the_way"]
        assert party["pid"] == holder.info.backend_pid and party["application_name"] == "cron-report"
    wait_for(lambda: not dbchaos_sessions(db, include_control=True), 3.0, what="no dbchaos session")
    assert query(db, "SELECT count(*) FROM pg_locks WHERE locktype = 'relation' AND relation = 'items'::regclass") == [
        (0,)
    ]


def test_dry_run_prints_the_plan_for_people(db: str) -> None:
    out = dbchaos("inject", "row-lock", "--target", db, "-p", "table=items", "-p", "limit=3", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "dry run: row-lock" in out.stdout and "nothing was changed" in out.stdout
    assert "FOR UPDATE" in out.stdout and "ROLLBACK" in out.stdout and "public.items (3 rows)" in out.stdout
    assert "in the way now" in out.stdout and "would block" in out.stdout


def test_dry_run_refuses_bad_input_like_a_real_inject(db: str) -> None:
    args = ("inject", "table-lock", "--target", db, "-p", "tables=nope", "--json")
    real, dry = dbchaos(*args), dbchaos(*args, "--dry-run")
    assert real.returncode == dry.returncode == 2
    assert json.loads(dry.stdout) == json.loads(real.stdout)
    assert json.loads(dry.stdout)["error"]["code"] == "unknown_table"
