"""What every command shares: consoles, --json output, and errors as one clear line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from dbchaos import errors
from dbchaos.cli import exits
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.settings import Settings
from dbchaos.targets import Target, parse_dsn
from dbchaos.targetsfile import load_targets_file


def stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int, *, as_json: bool = False, error_code: str = "error") -> NoReturn:
    """Print one clear line (or a JSON error object) and exit with ``code``."""
    if as_json:
        emit_json({"error": {"detail": message, "code": error_code}})
    else:
        stderr().print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def fail_with(exc: errors.DbChaosError, *, as_json: bool = False) -> NoReturn:
    fail(exc.message, exits.code_for(exc), as_json=as_json, error_code=exc.code)


def resolve_target(value: str | None, settings: Settings) -> Target:
    """``--target`` is a DSN or a configured target name (today: ``default``)."""
    if value is None or value == settings.target_name:
        if settings.target_dsn is None:
            raise errors.InvalidInput("no target: pass --target DSN (or set DBCHAOS_TARGET_DSN)", field="target")
        return Target(settings.target_name, settings.target_dsn)
    if "=" in value or "://" in value:
        parse_dsn(value)
        return Target(settings.target_name, value)
    raise errors.InvalidInput(
        f"unknown target name {value!r}; pass a DSN such as postgresql://user@host/db", field="target"
    )


def target_or_name(value: str | None, settings: Settings) -> Target:
    """``--target``: a DSN, or with a targets file configured, one of its target names."""
    if value is not None and settings.targets_file and "=" not in value and "://" not in value:
        found = load_targets_file(settings.targets_file)
        if value not in found.targets:
            raise errors.InvalidInput(
                f"no target {value!r} in the targets file (known: {', '.join(sorted(found.targets))})", field="target"
            )
        return found.targets[value]
    return resolve_target(value, settings)


def load_graphs(settings: Settings) -> dict[str, RevisionGraph]:
    """The default target's revision graph, when the operator configured its alembic.ini.

    Loading imports the revision files (runs their code): the path comes only from the
    operator's flags or environment.
    """
    if not settings.alembic_ini:
        return {}
    try:
        return {settings.target_name: RevisionGraph.from_alembic_ini(Path(settings.alembic_ini))}
    except errors.DbChaosError:
        raise
    except Exception as exc:
        raise errors.InvalidInput(
            f"cannot read the Alembic scripts of {settings.alembic_ini}: {exc}", field="alembic_ini"
        ) from exc
