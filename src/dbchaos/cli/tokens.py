"""``dbchaos token create``: a new bearer token; the secret is printed once, only its hash is kept."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from dbchaos import errors
from dbchaos.api.auth import NewToken, TokenScope, TokenStore, generate_token
from dbchaos.cli import exits
from dbchaos.cli.common import emit_json, fail, fail_with

app = typer.Typer(
    name="token",
    help="Bearer tokens for the dbchaos server (see docs/security.md).",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("create")
def create(
    scope: Annotated[
        str, typer.Option(help="read: status only; inject: also create and abort faults; admin: also reset.")
    ],
    name: Annotated[
        str | None,
        typer.Option(help="Who uses it (shown in the audit trail).  [default: <scope>-<hash prefix>]"),
    ] = None,
    tokens_file: Annotated[
        Path | None,
        typer.Option(help="Also append the entry to this tokens file (created with mode 0600 if missing)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Create a token: print its secret (once) and the entry to add to the tokens file."""
    try:
        chosen = TokenScope.parse(scope)
    except ValueError as exc:
        fail(f"--scope: {exc}", exits.USAGE, as_json=as_json, error_code="invalid_input")
    try:
        token = generate_token(chosen, name)
    except ValueError as exc:
        fail(f"--name: {exc}", exits.USAGE, as_json=as_json, error_code="invalid_input")
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry = token.entry_toml(created)
    if tokens_file is not None:
        try:
            _append(tokens_file, entry)
        except errors.DbChaosError as exc:
            fail_with(exc, as_json=as_json)
    if as_json:
        emit_json(
            {
                "name": token.name,
                "scope": token.scope.value,
                "secret": token.secret,
                "sha256": token.sha256,
                "entry": entry,
                "tokens_file": str(tokens_file) if tokens_file is not None else None,
            }
        )
        return
    _print_human(token, entry, tokens_file)


def _append(path: Path, entry: str) -> None:
    """Append ``entry``, refusing anything that would leave the file unreadable by the server."""
    existing = ""
    if path.exists():
        TokenStore.load(path)  # unreadable or broken already: its own clear error
        existing = path.read_text(encoding="utf-8")
    addition = ("" if not existing else "\n" if existing.endswith("\n") else "\n\n") + entry
    TokenStore.parse(existing + addition, str(path))  # e.g. a duplicate name: refused before writing
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(addition)
    except OSError as exc:
        raise errors.InvalidInput(
            f"cannot write the tokens file {path}: {exc.strerror or exc}", field="tokens_file"
        ) from None


def _print_human(token: NewToken, entry: str, tokens_file: Path | None) -> None:
    # plain writes: rich would read "[[token]]" as markup
    w = sys.stdout.write
    w(f"created token {token.name!r} with scope {token.scope.value!r}\n\n")
    w("secret (shown only now; dbchaos keeps just its SHA-256 hash):\n")
    w(f"{token.secret}\n\n")
    w("clients send it as:  Authorization: Bearer <secret>   (the dbchaos CLI reads DBCHAOS_TOKEN or --token)\n\n")
    if tokens_file is not None:
        w(f"appended this entry to {tokens_file}; restart 'dbchaos serve --tokens-file {tokens_file}' to use it:\n")
    else:
        w("add this entry to the tokens file ('dbchaos serve --tokens-file PATH'), then restart the server:\n")
    w("\n" + entry)
    sys.stdout.flush()
