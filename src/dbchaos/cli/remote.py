"""Commands that talk to a running dbchaos server: ``status``, ``abort``, ``reset``."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import typer

from dbchaos.cli import exits
from dbchaos.cli.common import emit_json, fail, stdout
from dbchaos.cli.render import faults_table

ServerOpt = Annotated[str, typer.Option("--server", help="URL of the dbchaos server.", envvar="DBCHAOS_SERVER")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="Bearer token, when the server has tokens configured.", envvar="DBCHAOS_TOKEN"),
]
DEFAULT_SERVER = "http://127.0.0.1:8080"


def _call(method: str, server: str, path: str, as_json: bool, token: str | None = None) -> Any:
    url = server.rstrip("/") + path
    headers = {"Authorization": f"Bearer {token.strip()}"} if token else {}
    try:
        resp = httpx.request(method, url, headers=headers, timeout=30.0)
    except httpx.HTTPError as exc:
        fail(
            f"cannot reach the dbchaos server at {server}: {exc}",
            exits.UNREACHABLE,
            as_json=as_json,
            error_code="server_unreachable",
        )
    try:
        body = resp.json()
    except ValueError:
        fail(f"{server} did not answer like a dbchaos server (HTTP {resp.status_code})", exits.FAILED, as_json=as_json)
    if resp.status_code >= 400:
        detail = body.get("detail") if isinstance(body, dict) else str(body)
        code = body.get("code", "error") if isinstance(body, dict) else "error"
        status = (
            exits.USAGE if resp.status_code == 422 else exits.UNREACHABLE if resp.status_code == 502 else exits.FAILED
        )
        if resp.status_code == 401:
            detail = f"{detail}; pass --token or set DBCHAOS_TOKEN"
        fail(f"{detail} (HTTP {resp.status_code})", status, as_json=as_json, error_code=code)
    return body


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
