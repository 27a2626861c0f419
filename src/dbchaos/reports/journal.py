"""The run journal: what an experiment did and saw, in a stable JSON schema.

Schema ``dbchaos.run/v1`` (documented in docs/reports.md). Times inside a journal are seconds
since the run started (``t``); ``started_at``/``ended_at`` are Unix seconds (UTC). Adding fields
is a compatible change; renaming or removing one bumps the version.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dbchaos.errors import InvalidInput

SCHEMA = "dbchaos.run/v1"


@dataclass
class ProbeResult:
    """One probe request: when it started, how long it took, and how it ended."""

    t: float
    latency_ms: float
    ok: bool
    status: int | None = None
    sqlstate: str | None = None
    error: str | None = None
    timed_out: bool = False
    request_id: str | None = None
    #: for a request that failed or timed out: did its write commit anyway (None = not checked)
    committed: bool | None = None


@dataclass
class ProbeInfo:
    name: str
    type: str  # "http" | "sql"
    target: str  # "GET http://.../items" or the statement
    timeout_s: float
    results: list[ProbeResult] = field(default_factory=list)


@dataclass
class FaultWindow:
    """A fault of the method: when it was planned, when it really held, and how it ended."""

    name: str
    kind: str
    params: dict[str, Any]
    at_s: float
    duration_s: float
    id: str | None = None
    start_t: float | None = None
    end_t: float | None = None
    state: str | None = None
    end_reason: str | None = None
    error: str | None = None
    max_blocked: int = 0


@dataclass
class Sample:
    """One observer sample of the target database."""

    t: float
    blocked: int
    longest_wait_s: float = 0.0
    connections: int = 0
    max_connections: int = 0
    idle_in_transaction: int = 0
    oldest_idle_in_transaction_s: float = 0.0
    rollbacks: int = 0
    deadlocks: int = 0
    lock_tree: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Phase:
    name: str  # "baseline" | "during" | "after"
    start_t: float
    end_t: float


@dataclass
class ToleranceResult:
    text: str
    held: bool
    observed: float | None
    limit: float
    unit: str
    probe: str | None
    phase: str
    detail: str = ""


@dataclass
class Halt:
    condition: str
    observed: float
    t: float


@dataclass
class RunJournal:
    id: str
    title: str
    target: str
    started_at: float
    ended_at: float
    phases: list[Phase]
    faults: list[FaultWindow]
    probes: list[ProbeInfo]
    samples: list[Sample]
    tolerances: list[ToleranceResult] = field(default_factory=list)
    halted: Halt | None = None
    findings: list[str] = field(default_factory=list)
    experiment_file: str | None = None
    schema: str = SCHEMA

    @property
    def verdict(self) -> str:
        """``halted``, ``deviated`` (a tolerance failed) or ``held``."""
        if self.halted is not None:
            return "halted"
        return "held" if all(t.held for t in self.tolerances) else "deviated"

    @property
    def duration_s(self) -> float:
        return max(0.0, self.ended_at - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = self.verdict
        return out

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1, default=str) + "\n")
        tmp.replace(path)


def _build(cls: type[Any], data: dict[str, Any]) -> Any:
    return cls(**data)


def journal_from_dict(data: dict[str, Any]) -> RunJournal:
    """Parse a journal; a wrong schema or shape is an ``InvalidInput`` naming what is wrong."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise InvalidInput(f"not a dbchaos run journal (schema {found!r}, expected {SCHEMA!r})", code="bad_journal")
    try:
        body = {k: v for k, v in data.items() if k != "verdict"}
        body["phases"] = [_build(Phase, p) for p in data["phases"]]
        body["faults"] = [_build(FaultWindow, f) for f in data["faults"]]
        body["probes"] = [
            ProbeInfo(**{**p, "results": [_build(ProbeResult, r) for r in p.get("results", [])]})
            for p in data["probes"]
        ]
        body["samples"] = [_build(Sample, s) for s in data["samples"]]
        body["tolerances"] = [_build(ToleranceResult, t) for t in data.get("tolerances", [])]
        body["halted"] = _build(Halt, data["halted"]) if data.get("halted") else None
        return RunJournal(**body)
    except (KeyError, TypeError) as exc:
        raise InvalidInput(f"malformed run journal: {exc}", code="bad_journal") from exc


def load_journal(path: Path) -> RunJournal:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", code="bad_journal") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: not JSON (line {exc.lineno}: {exc.msg})", code="bad_journal") from exc
    return journal_from_dict(data)
