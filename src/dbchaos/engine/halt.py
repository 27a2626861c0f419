"""Halt rules: when dbchaos stops every fault on a target by itself.

A game day goes wrong in ways nobody planned: a lock meant to slow one endpoint queues the
whole application behind it, or a fault outlives the person who started it. The operator
writes limits per target (``[targets.NAME.halt]`` in the targets file, or server-wide
``--halt-*`` flags); the engine's monitor evaluates them about once a second on the
snapshot it takes anyway (no extra query), and when one trips it reverts every unfinished
fault on that target with end reason ``halted``.

Everything here is a pure function of a snapshot and the fault records, so the rules are
tested without a database and cost nothing but a little arithmetic per monitor tick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dbchaos.engine.model import FaultRecord
from dbchaos.observe.activity import Snapshot, impact_of
from dbchaos.settings import Settings
from dbchaos.targets import HaltRules

#: rule names, in the order they are evaluated (and reported when several trip at once)
RULES = ("max_blocked_sessions", "max_blocked_for_s", "max_fault_age_s", "max_connections_used_pct")


@dataclass(frozen=True)
class Trip:
    """A rule that tripped: its name, its limit and the value that went over it."""

    rule: str
    limit: float
    observed: float

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "limit": self.limit, "observed": self.observed}

    def describe(self, target: str) -> str:
        what = {
            "max_blocked_sessions": "sessions blocked behind dbchaos faults",
            "max_blocked_for_s": "seconds the longest-blocked session waited",
            "max_fault_age_s": "seconds since the oldest fault became active",
            "max_connections_used_pct": "percent of max_connections in use",
        }[self.rule]
        return f"halt rule {self.rule} tripped on target {target!r}: {self.observed:g} {what} (limit {self.limit:g})"


def server_defaults(settings: Settings) -> HaltRules:
    """The server-wide rules (``--halt-*`` flags / ``DBCHAOS_HALT_*``)."""
    return HaltRules(
        max_blocked_sessions=settings.halt_max_blocked_sessions,
        max_blocked_for_s=settings.halt_max_blocked_for_s,
        max_fault_age_s=settings.halt_max_fault_age_s,
        max_connections_used_pct=settings.halt_max_connections_used_pct,
    )


def effective_rules(own: HaltRules, settings: Settings) -> HaltRules:
    """A target's rules: its own, and the server-wide ones where it sets none."""
    return own.or_defaults(server_defaults(settings))


def observe(
    rules: HaltRules,
    snapshot: Snapshot,
    active: Sequence[FaultRecord],
    *,
    now: float,
    max_connections: int | None,
) -> dict[str, float]:
    """The values the set rules compare with, from one snapshot of the target's server and
    the target's active faults (rules that are off, or cannot be judged, are left out)."""
    out: dict[str, float] = {}
    pids = [p for r in active for p in r.pids]
    if rules.max_blocked_sessions is not None or rules.max_blocked_for_s is not None:
        # one impact over every fault's sessions: a session stuck behind two faults counts once,
        # and a fault's own sessions (a lock queue's) are never "blocked"
        blocked = impact_of(snapshot, pids).blocked
        out["max_blocked_sessions"] = len(blocked)
        waits = [b.session.state_age_s for b in blocked if b.session.state_age_s is not None]
        out["max_blocked_for_s"] = round(max(waits, default=0.0), 3)
    if rules.max_fault_age_s is not None:
        ages = [now - r.activated_at for r in active if r.activated_at is not None]
        out["max_fault_age_s"] = round(max(ages, default=0.0), 3)
    if rules.max_connections_used_pct is not None and max_connections:
        used = len(snapshot.sessions) + 1  # the snapshot leaves out the session that took it
        out["max_connections_used_pct"] = round(100.0 * used / max_connections, 1)
    return out


def evaluate(
    rules: HaltRules,
    snapshot: Snapshot,
    active: Sequence[FaultRecord],
    *,
    now: float,
    max_connections: int | None,
) -> Trip | None:
    """The first rule (in :data:`RULES` order) whose observed value is over its limit, or ``None``."""
    if not rules.any or not active:
        return None
    seen = observe(rules, snapshot, active, now=now, max_connections=max_connections)
    for rule in RULES:
        limit = getattr(rules, rule)
        if limit is not None and rule in seen and seen[rule] > limit:
            return Trip(rule, limit, seen[rule])
    return None
