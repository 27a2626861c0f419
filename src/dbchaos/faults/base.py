"""The fault contract.

A fault kind is one class with a ``kind`` name, a pydantic parameter model checked
before anything touches the database, and three steps:

* :meth:`Fault.prepare` — resolve names through the catalog (422 on anything unknown);
* :meth:`Fault.inject` — acquire the fault through sessions the engine hands out;
* :meth:`Fault.revert` — undo it; safe to call twice and after a crash.

:meth:`Fault.plan` says what inject and revert would run and lock, without running them
(dry runs; see :mod:`dbchaos.faults.plan`).

``observe`` is generic: the engine reads what the fault's sessions hold and whom they
block from ``pg_locks`` / ``pg_stat_activity``; :meth:`Fault.details` adds what only
the kind knows (rows locked, keys held). Kinds never sleep out their duration and
never touch global state: deadlines, abort and bookkeeping belong to the engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import psycopg
from pydantic import BaseModel, ConfigDict

from dbchaos.engine.model import EndReason, State
from dbchaos.engine.session import Bounds, SessionFactory
from dbchaos.faults.plan import FaultPlan

if TYPE_CHECKING:
    from dbchaos.faults.migration.graph import RevisionGraph


class FaultParams(BaseModel):
    """Base of every kind's parameter model: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=FaultParams)


@dataclass(frozen=True)
class FaultEnv:
    """What the engine tells a fault about itself before ``prepare``."""

    fault_id: str
    instance: str
    owner_key: int
    duration_s: float
    #: the application's revision graph for this target, when the operator configured it
    graph: RevisionGraph | None = None


@dataclass(frozen=True)
class RevertOutcome:
    """How a revert ended: ``reverted``, ``lost``, ``superseded`` or ``failed``."""

    state: State
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


class Fault(ABC, Generic[P]):
    """One fault of one kind, from preparation to revert."""

    kind: ClassVar[str]
    summary: ClassVar[str]
    params_model: ClassVar[type[FaultParams]]
    #: open the first session while the engine still checks the request (faster inject);
    #: off for kinds whose ``prepare`` counts connections
    connect_early: ClassVar[bool] = True

    #: set by the engine before ``prepare``
    env: FaultEnv

    def __init__(self, params: P) -> None:
        self.params = params

    async def prepare(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Resolve and check everything the request names; raise ``InvalidInput``."""

    @abstractmethod
    async def inject(self, sessions: SessionFactory) -> None:
        """Acquire the fault. Raise (``LockNotAcquired`` or a driver error) if it cannot."""

    async def revert(self, sessions: SessionFactory, reason: EndReason) -> RevertOutcome:
        """Release everything; ``lost`` if PostgreSQL had already dropped it."""
        alive = await sessions.release_all()
        if alive:
            return RevertOutcome(State.REVERTED)
        return RevertOutcome(State.LOST, "the fault's session went away (PostgreSQL released what it held)")

    async def drift(self, conn: psycopg.AsyncConnection[Any]) -> list[str]:
        """Changes someone else made to the state this fault set (journaled kinds only)."""
        return []

    def details(self) -> dict[str, Any]:
        """Kind-specific facts for status answers (resolved names, rows locked...)."""
        return {}

    def describe_params(self) -> dict[str, Any]:
        """The parameters as answers show them (normalised spellings)."""
        return self.params.model_dump(mode="json")

    def objects(self) -> list[str]:
        """Names of the database objects this fault acts on (for conflict checks and display)."""
        return []

    async def plan(self, conn: psycopg.AsyncConnection[Any], bounds: Bounds) -> FaultPlan:
        """What :meth:`inject` and :meth:`revert` would send and lock, after :meth:`prepare`,
        on the same connection inside a read-only transaction: reads only, never a lock
        beyond ACCESS SHARE. Kinds override it; this default knows only that the fault
        opens a session and that revert closes it."""
        plan = FaultPlan()
        plan.connect()
        plan.notes.append(f"{self.kind} does not describe its statements or locks; a dry run shows only its session")
        return plan
