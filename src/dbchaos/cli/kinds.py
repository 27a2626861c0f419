"""``dbchaos kinds``: the fault kinds and their parameters (no server needed)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from dbchaos.cli.common import emit_json, stdout
from dbchaos.faults.registry import default_registry


def _param_line(name: str, prop: dict[str, Any], required: bool) -> str:
    default = f" (default {prop['default']!r})" if "default" in prop else " (required)" if required else ""
    return f"{name}{default}: {prop.get('description', '')}".rstrip(": ")


def kinds(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List the fault kinds with their parameters."""
    described = default_registry().describe()
    if as_json:
        emit_json({"kinds": described})
        return
    table = Table(show_edge=False, show_lines=True)
    table.add_column("kind", style="bold")
    table.add_column("what it does")
    table.add_column("parameters")
    for k in described:
        schema = k["params_schema"]
        required = set(schema.get("required", []))
        params = "\n".join(_param_line(n, p, n in required) for n, p in schema.get("properties", {}).items())
        table.add_row(k["kind"], k["summary"], params)
    stdout().print(table)
