"""Drill: the audit trail accounts for every statement dbchaos ran (issue 6, Acceptance 5).

A PostgreSQL server of the drill's own logs every statement (``log_statement = all``) with the
session's pid and application name. dbchaos runs a mix of lock and migration faults there
(deadline ends, aborts, a conflict, status and health calls, a graceful shutdown); then every
statement PostgreSQL logged for a ``dbchaos:%`` session must appear in dbchaos's audit log
(``--audit-log``) under the same fault id (or the same control, spare or recovery label).
"""

from __future__ import annotations

import collections
import json
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.alembic_helpers import INI, migrate
from tests.drills.private_pg import private_pg
from tests.helpers import wait_for
from tests.pg import server_labels
from tests.server_proc import dbchaos_server

PREFIX = "DRILL|"
LOG_SETTINGS = {
    "log_statement": "all",
    "log_line_prefix": f"{PREFIX}%p|%a|",
    "logging_collector": "off",
    "log_min_messages": "warning",
}
_ENTRY = re.compile(r"DRILL\|(\d+)\|([^|]*)\|(?:LOG|LOG):  (?:statement|execute [^:]+): (.*)")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_BIND = re.compile(r"set_config\('application_name', 'dbchaos:(" + _UUID.pattern + r")'")
_PLACEHOLDER = re.compile(r"%\((\w+)\)[sbt]|%[sbt]|\$\d+")


def normalise(text: str) -> str:
    """A statement as PostgreSQL logs it and as the audit log records it, made comparable:
    placeholders (``%s`` there, ``$1`` here) and whitespace unified."""
    text = _PLACEHOLDER.sub("$?", text.replace("%%", "%"))
    return " ".join(text.split()).rstrip(";").strip()


@dataclass(frozen=True)
class Logged:
    pid: int
    app: str
    sql: str


def postgres_log(path: Path, offset: int) -> list[Logged]:
    """Every statement PostgreSQL logged for a ``dbchaos:%`` session from byte ``offset`` on
    (continuation lines joined)."""
    out: list[Logged] = []
    current: list[Any] | None = None
    with path.open("rb") as fh:
        fh.seek(offset)
        text = fh.read().decode(errors="replace")
    for line in text.splitlines():
        if line.startswith(PREFIX):
            if current is not None:
                out.append(Logged(current[0], current[1], "\n".join(current[2])))
                current = None
            m = _ENTRY.match(line)
            if m and m.group(2).startswith("dbchaos:"):
                current = [int(m.group(1)), m.group(2), [m.group(3)]]
        elif current is not None:
            current[2].append(line)
    if current is not None:
        out.append(Logged(current[0], current[1], "\n".join(current[2])))
    return out


def label_of(entry: Logged) -> str:
    """The audit label a logged statement must carry: its fault id for fault sessions (and for
    the statement that binds a warm spare to a fault), else the session's role."""
    suffix = entry.app.removeprefix("dbchaos:")
    if _UUID.fullmatch(suffix):
        return suffix
    bind = _BIND.search(entry.sql)
    if bind:
        return bind.group(1)
    if suffix in ("check", "diagnose"):  # GET /v1/health's target check, the migrations diagnosis
        return suffix
    parts = suffix.split(":")
    if len(parts) == 1:
        return "control" if re.fullmatch(r"[0-9a-f]{12}", parts[0]) else parts[0]
    return parts[-1]


def audit_statements(path: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if e.get("type") == "statement"]


FAULTS: list[tuple[dict[str, Any], str]] = [  # (request, how it ends)
    ({"kind": "table-lock", "params": {"tables": ["items"]}}, "deadline"),
    ({"kind": "row-lock", "params": {"table": "orders", "limit": 3}}, "abort"),
    ({"kind": "advisory-lock", "params": {"keys": [5, [6, 7]]}}, "deadline"),
    ({"kind": "idle-transaction", "params": {"tables": ["users"]}}, "abort"),
    ({"kind": "connection-exhaustion", "params": {"connections": 2}}, "deadline"),
    ({"kind": "unknown-revision", "params": {}}, "abort"),
    ({"kind": "hidden-object", "params": {"table": "invoices"}}, "deadline"),
    ({"kind": "hidden-object", "params": {"table": "accounts", "column": "email"}}, "shutdown"),
    ({"kind": "table-lock", "params": {"tables": ["accounts"], "mode": "SHARE"}}, "shutdown"),
]


@pytest.mark.drill
@pytest.mark.parametrize("label", server_labels())
def test_the_audit_log_accounts_for_every_statement_postgresql_logged(label: str, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with private_pg(label, LOG_SETTINGS) as target:
        migrate(target.dsn)
        start = target.log_file.stat().st_size  # the drill's own set-up (opt-in, migrations) is before this
        args = ["--target", target.dsn, "--alembic-ini", str(INI), "--audit-log", str(audit)]
        with dbchaos_server(args, tmp_path) as server, server.client() as client:
            ids: dict[str, str] = {}
            for body, end in FAULTS:
                resp = client.post("/v1/faults", json={**body, "duration_s": 1.5 if end == "deadline" else 60})
                assert resp.status_code == 201, resp.text
                ids[resp.json()["id"]] = end
            # a conflict (the version table is under a fault), status with live impact, health
            assert client.post("/v1/faults", json={"kind": "behind", "duration_s": 5}).status_code in (409, 422)
            assert client.get("/v1/faults").status_code == 200
            assert client.get("/v1/health").status_code == 200
            assert client.get("/v1/targets/default/migrations").status_code == 200
            for fid, end in ids.items():
                if end == "abort":
                    assert client.delete(f"/v1/faults/{fid}").status_code == 200
            wait_for(
                lambda: all(
                    client.get(f"/v1/faults/{f}").json()["state"] in ("reverted", "lost")
                    for f, e in ids.items()
                    if e != "shutdown"
                ),
                10.0,
                0.2,
                what="the deadlines",
            )
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(30) == 0, server.output()
        time.sleep(0.5)  # the server's last lines reach its log

        logged = postgres_log(target.log_file, start)
        recorded = audit_statements(audit)
    assert logged, "PostgreSQL logged no dbchaos statement: is log_statement on?"
    assert {e["fault_id"] for e in recorded} >= set(ids), "every fault's statements are in the audit log"

    want = collections.Counter((label_of(e), normalise(e.sql)) for e in logged)
    have = collections.Counter((str(e["fault_id"]), normalise(str(e["sql"]))) for e in recorded)
    missing = want - have
    by_session = collections.Counter(e.app.split(":")[-1] if ":" in e.app[8:] else e.app for e in logged)
    assert not missing, (
        f"{sum(missing.values())} of {sum(want.values())} statements PostgreSQL logged for dbchaos sessions "
        f"are not in the audit log (sessions: {dict(by_session)}):\n"
        + "\n".join(f"  {n}x [{lbl}] {sql[:160]}" for (lbl, sql), n in sorted(missing.items()))
    )
