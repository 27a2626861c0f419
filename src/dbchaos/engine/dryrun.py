"""Dry runs: what a fault request would do, checked exactly like the real one, changing nothing.

``Engine.dry_run`` validates the request with the same code as ``Engine.create`` (same
4xx answers), then works on a connection of its own (``dbchaos:<instance>:dry-run``) that
it closes before answering, so no session stays behind and no owner lock is taken:

1. the target checks (version, replica, read-only) and the opt-in marker;
2. in ONE read-only transaction, rolled back: the kind's ``prepare`` (catalog look-ups),
   the target's policy, the kind's :meth:`~dbchaos.faults.base.Fault.plan` (statements,
   locks, facts) and the blast radius (:mod:`dbchaos.observe.blast`). The only table locks
   this can take are ACCESS SHARE, for reads bounded by a short ``lock_timeout``.

No fault record, no fault session, no journal row. The audit trail gets one ``dry_run``
event (the HTTP request is recorded as usual too).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from dbchaos.audit import redact
from dbchaos.engine.control import ControlChannel
from dbchaos.engine.session import Bounds, SessionFactory
from dbchaos.faults.base import Fault, FaultEnv
from dbchaos.faults.migration import journal
from dbchaos.faults.migration.base import JournaledFault
from dbchaos.faults.plan import FaultPlan, PlannedStatement, Recorder
from dbchaos.observe.blast import BlastRadius, blast_radius, connected_clients

if TYPE_CHECKING:
    from dbchaos.engine.engine import Engine, Validated

#: lock_timeout of the dry run's own reads (a table locked against readers is reported, not waited for)
READ_LOCK_TIMEOUT = "200ms"


@dataclass
class DryRun:
    """The answer of a dry run (``as_dict`` is the API's and the CLI's JSON)."""

    kind: str
    target: str
    params: dict[str, Any]
    duration_s: float
    acquire_timeout_s: float
    labels: dict[str, str]
    server_version: str | None
    plan_id: str
    session_settings: dict[str, Any]
    plan: FaultPlan
    radius: BlastRadius
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": True,
            "kind": self.kind,
            "target": self.target,
            "params": self.params,
            "duration_s": self.duration_s,
            "acquire_timeout_s": self.acquire_timeout_s,
            "labels": self.labels,
            "server_version": self.server_version,
            "session_settings": self.session_settings,
            "statements": [s.as_dict() for s in self.plan.statements],
            "locks": [lk.as_dict() for lk in self.plan.locks],
            "blast_radius": self.radius.as_dict(),
            "details": self.plan.details,
            "notes": [*self.plan.notes, *self.notes],
        }


async def plan_dry_run(engine: Engine, checked: Validated) -> DryRun:
    """Plan ``checked`` on ``engine``'s target (see the module docstring)."""
    fault, target = checked.fault, checked.target
    plan_id = str(uuid.uuid4())
    channel = ControlChannel(
        target,
        f"{engine.instance}:dry-run",
        connect_timeout_s=engine.settings.connect_timeout_s,
        audit=engine.audit,
    )
    try:
        await engine.check_usable(target, channel)
        fault.env = FaultEnv(
            plan_id, engine.instance, engine.owner_key, checked.duration_s, engine.graphs.get(target.name)
        )
        bounds = Bounds(checked.acquire_timeout_s, checked.duration_s, engine.settings.server_side_grace_s)
        factory = SessionFactory(target, plan_id, bounds, channel.server_version_num)

        async def work(conn: psycopg.AsyncConnection[Any]) -> tuple[FaultPlan, BlastRadius]:
            async with conn.transaction(force_rollback=True):
                await conn.execute("SET TRANSACTION READ ONLY")
                await fault.prepare(conn)
                engine.check_objects(target, fault)
                await conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(READ_LOCK_TIMEOUT)))
                plan = await fault.plan(conn, bounds)
                await _render_connects(conn, plan, factory)
                radius = await _radius(conn, fault, plan)
            return plan, radius

        plan, radius = await engine.admit(fault, target, channel, lambda: channel.run(work))
        check = await channel.check(max_age_s=float("inf"))
    finally:
        await channel.close()
    result = DryRun(
        kind=fault.kind,
        target=target.name,
        params=fault.describe_params(),
        duration_s=checked.duration_s,
        acquire_timeout_s=checked.acquire_timeout_s,
        labels=checked.labels,
        server_version=check.server_version,
        plan_id=plan_id,
        session_settings={
            "application_name": factory.application_name,
            **bounds.settings(check.server_version_num or 0),
        },
        plan=plan,
        radius=radius,
        notes=[
            f"ids and generated names in this plan use the stand-in fault id {plan_id}; a real request gets its own",
        ],
    )
    if engine.audit is not None:
        engine.audit.record(
            {
                "type": "dry_run",
                "target": target.name,
                "kind": fault.kind,
                "params": redact(result.params),
                "fault_id": None,
                "plan_id": plan_id,
                "outcome": "dry_run",
                "statements": len(plan.statements),
                "in_the_way": sorted(p for p in radius.in_the_way if p is not None),
            }
        )
    return result


async def _render_connects(conn: psycopg.AsyncConnection[Any], plan: FaultPlan, factory: SessionFactory) -> None:
    """Fill in each session opening with the settings it carries: the ``set_config`` call
    that binds a warm spare (a new connection sends the same values as startup options)."""
    out: list[PlannedStatement] = []
    for st in plan.statements:
        if st.phase != "connect" or st.sql is not None:
            out.append(st)
            continue
        scratch = FaultPlan()
        await factory._bind(Recorder(conn, scratch, st.session, "connect").as_connection)
        out.append(
            PlannedStatement(
                scratch.statements[0].sql,
                st.session,
                "connect",
                "a new session: these settings travel as startup options of a new connection, or this "
                "set_config call binds a warm spare",
                st.sessions,
            )
        )
    plan.statements = out


async def _radius(conn: psycopg.AsyncConnection[Any], fault: Fault[Any], plan: FaultPlan) -> BlastRadius:
    radius = await blast_radius(conn, plan.locks)
    if any(lk.locktype == "connection_slots" for lk in plan.locks):
        radius.clients = await connected_clients(conn)
        radius.notes.append(
            "connection slots are per cluster: the clients listed (every database) keep their sessions, but cannot "
            "open new ones beyond the slots left"
        )
    if isinstance(fault, JournaledFault) and await journal.exists(conn):
        for fid, kind, objs in await journal.active_on(conn, fault.objects()):
            radius.dbchaos_faults.append({"fault_id": fid, "kind": kind, "objects": objs})
        if radius.dbchaos_faults:
            radius.notes.append(
                "another dbchaos fault acts on the same objects: the inject would fail with 409 object_under_fault"
            )
    return radius
