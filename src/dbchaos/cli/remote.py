"""Commands that talk to a running dbchaos server: ``status``, ``abort``, ``reset``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dbchaos.cli import exits
from dbchaos.cli.common import emit_json, fail, stdout
from dbchaos.cli.render import faults_table
from dbchaos.client import DbChaosApiError, DbChaosClient, DbChaosUnreachable

ServerOpt = Annotated[str, typer.Option("--server", help="URL of the dbchaos server.", envvar="DBCHAOS_SERVER")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="Bearer token, when the server has tokens configured.", envvar="DBCHAOS_TOKEN"),
]
DEFAULT_SERVER = "http://127.0.0.1:8080"


def _call(method: str, server: str, path: str, as_json: bool, token: str | None = None) -> Any:
    """One API call through :class:`~dbchaos.client.DbChaosClient`; errors become exit codes."""
    with DbChaosClient(server, token, timeout=30.0) as client:
        try:
            return client.request(method, path)
        except DbChaosUnreachable as exc:
            fail(exc.detail, exits.UNREACHABLE, as_json=as_json, error_code="server_unreachable")
        except DbChaosApiError as exc:
            if exc.code in ("not_dbchaos", "http_error"):
                fail(
                    f"{server} did not answer like a dbchaos server (HTTP {exc.status})", exits.FAILED, as_json=as_json
                )
            status = exits.USAGE if exc.status == 422 else exits.UNREACHABLE if exc.status == 502 else exits.FAILED
            detail = f"{exc.detail}; pass --token or set DBCHAOS_TOKEN" if exc.status == 401 else exc.detail
            fail(f"{detail} (HTTP {exc.status})", status, as_json=as_json, error_code=exc.code)


def status(
    fault_id: Annotated[str | None, typer.Argument(help="One fault's id; all faults when omitted.")] = None,
    server: ServerOpt = DEFAULT_SERVER,
    as_json: JsonOpt = False,
    token: TokenOpt = None,
) -> None:
    """Show the server's faults (or one), with what they block now."""
    if fault_id is None:
        body = _call("GET", server, "/v1/faults", as_json, token)
        if as_json:
            emit_json(body)
        elif not body["faults"]:
            stdout().print("no faults")
        else:
            stdout().print(faults_table(body["faults"]))
        return
    body = _call("GET", server, f"/v1/faults/{fault_id}", as_json, token)
    if as_json:
        emit_json(body)
        return
    out = stdout()
    out.print(faults_table([body]))
    for b in (body.get("impact") or {}).get("blocked", []):
        out.print(f"  blocked: pid {b['pid']} {b['application_name']!r} {b['state']} {b['wait_s']}s {b['query']!r}")
    if body.get("error"):
        out.print(f"  error: {body['error']}")


def abort(
    fault_id: Annotated[str, typer.Argument(help="The fault's id.")],
    server: ServerOpt = DEFAULT_SERVER,
    as_json: JsonOpt = False,
    token: TokenOpt = None,
) -> None:
    """Revert one fault now."""
    body = _call("DELETE", server, f"/v1/faults/{fault_id}", as_json, token)
    if as_json:
        emit_json(body)
    else:
        stdout().print(f"{body['id']}: {body['state']} ({body.get('end_reason')})")


def reset(server: ServerOpt = DEFAULT_SERVER, as_json: JsonOpt = False, token: TokenOpt = None) -> None:
    """Revert every fault the server holds."""
    body = _call("POST", server, "/v1/reset", as_json, token)
    if as_json:
        emit_json(body)
    else:
        stdout().print(f"reverted {len(body['reverted'])} fault(s)")
