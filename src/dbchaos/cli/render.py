"""How faults look in a terminal: the live view and summaries."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from dbchaos.engine.model import FaultRecord
from dbchaos.observe.activity import Impact


def describe(rec: FaultRecord) -> str:
    params = ", ".join(f"{k}={v}" for k, v in rec.params.items())
    return f"{rec.kind} on {rec.target!r} ({params})"


def remaining(rec: FaultRecord) -> float | None:
    return None if rec.deadline is None else max(0.0, rec.deadline - time.time())


def live_view(rec: FaultRecord, impact: Impact | None) -> RenderableType:
    """The refreshing panel of ``dbchaos inject``."""
    left = remaining(rec)
    head = Text.assemble(
        (f"{rec.kind}", "bold"),
        f"  {rec.state.value}",
        f"  {left:5.1f}s left" if left is not None else "",
        "   Ctrl-C reverts now",
    )
    parts: list[RenderableType] = [head, Text(describe(rec), style="dim")]
    if impact is not None:
        held = Table(title="held", title_justify="left", show_edge=False)
        for col in ("pid", "lock", "mode", "on"):
            held.add_column(col)
        for lk in impact.locks[:12]:
            held.add_row(str(lk.pid), lk.locktype, lk.mode, lk.relation or lk.key or "")
        if len(impact.locks) > 12:
            held.add_row("…", f"{len(impact.locks) - 12} more", "", "")
        parts.append(held)
        blocked = Table(title=f"blocked sessions: {impact.blocked_count}", title_justify="left", show_edge=False)
        for col in ("pid", "application", "user", "state", "waiting", "query"):
            blocked.add_column(col)
        for b in impact.blocked[:15]:
            s = b.session
            wait = f"{s.state_age_s:.1f}s" if s.state_age_s is not None else ""
            blocked.add_row(str(s.pid), s.application_name, s.user or "", s.state or "", wait, (s.query or "")[:60])
        parts.append(blocked)
    return Group(*parts)


def blocked_lines(impact: Impact) -> list[str]:
    """Plain-text lines for a terminal that is not interactive (logs, CI, pipes)."""
    return [
        f"blocked: pid {b.session.pid} app={b.session.application_name!r} user={b.session.user} "
        f"state={b.session.state} waiting={b.session.state_age_s or 0:.1f}s query={(b.session.query or '')[:80]!r}"
        for b in impact.blocked
    ]


def summary(rec: FaultRecord) -> str:
    took = ""
    if rec.activated_at and rec.ended_at:
        took = f" after {rec.ended_at - rec.activated_at:.1f}s"
    line = f"{rec.kind} {rec.id}: {rec.state.value}"
    if rec.end_reason:
        line += f" ({rec.end_reason.value}){took}"
    line += f"; at most {rec.max_blocked} session(s) blocked at once"
    if rec.error:
        line += f"; {rec.error}"
    return line


def faults_table(faults: list[dict[str, Any]]) -> Table:
    """A table of faults as the API returns them."""
    table = Table(show_edge=False)
    for col in ("id", "kind", "target", "state", "end", "blocked", "params"):
        table.add_column(col)
    for f in faults:
        impact = f.get("impact") or {}
        table.add_row(
            f["id"],
            f["kind"],
            f["target"],
            f["state"],
            f.get("end_reason") or "",
            str(impact.get("blocked_count", "")),
            ", ".join(f"{k}={v}" for k, v in (f.get("params") or {}).items()),
        )
    return table
