"""The engine: ids, states, deadlines, abort, reset, caps and the per-fault lifecycle.

Each fault runs in its own asyncio task: it acquires through sessions the engine opens
(bounded on the server side), becomes ``active``, waits for its deadline or a stop
request, and reverts. Nothing here blocks the event loop, so one fault waiting for its
lock never slows the API or another fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg

from dbchaos import errors, optin, privileges
from dbchaos.audit import AuditLog
from dbchaos.engine import halt
from dbchaos.engine.control import ControlChannel
from dbchaos.engine.deadline import check_movable, held_statement_why, moved_deadline
from dbchaos.engine.dryrun import DryRun, plan_dry_run
from dbchaos.engine.model import EndReason, FaultRecord, State
from dbchaos.engine.ownership import new_fault_id
from dbchaos.engine.pgerrors import translate
from dbchaos.engine.recovery import recover
from dbchaos.engine.reuse import ReusePool
from dbchaos.engine.session import Bounds, SessionFactory
from dbchaos.engine.spares import SparePool
from dbchaos.events import TOPIC_FAULT, EventBus, fault_data, rfc3339
from dbchaos.faults.base import Fault, FaultEnv, FaultParams
from dbchaos.faults.connection_exhaustion import ConnectionExhaustion
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.faults.migration.journal import owner_key
from dbchaos.faults.registry import Registry, bad_text
from dbchaos.metrics import Metrics
from dbchaos.observe.activity import Impact, Snapshot, impact_of
from dbchaos.settings import Settings
from dbchaos.targets import Target, targets_by_name
from dbchaos.webhooks import WebhookSink

_log = logging.getLogger("dbchaos.engine")
T = TypeVar("T")

MAX_ACQUIRE_TIMEOUT_S = 300.0
MAX_LABELS = 20
HISTORY_LIMIT = 10_000
MONITOR_INTERVAL_S = 1.0
RECOVERY_INTERVAL_S = 30.0
#: how long a target's version / read-only / recovery check is trusted
CHECK_TTL_S = 5.0
#: how long a target's opt-in marker, once seen, is trusted (a refusal is never cached)
OPT_IN_TTL_S = 5.0
#: targets added at run time (compat ``target_database_url``, when the targets file allows it)
MAX_AD_HOC_TARGETS = 16
RECOVERY_RETRY_S = 2.0


@dataclass(frozen=True)
class FaultRequest:
    kind: str
    params: Mapping[str, Any] | None = None
    duration_s: float | None = None
    target: str | None = None
    acquire_timeout_s: float | None = None
    labels: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Validated:
    """A request that passed the checks that need no database (see ``Engine.validate``)."""

    fault: Fault[Any]
    target: Target
    duration_s: float
    acquire_timeout_s: float
    labels: dict[str, str]


@dataclass
class _Managed:
    record: FaultRecord
    fault: Fault[Any]
    sessions: SessionFactory
    channel: ControlChannel
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    stop_reason: EndReason = EndReason.ABORTED
    force_kill_after_s: float | None = None
    error: errors.DbChaosError | None = None
    task: asyncio.Task[None] | None = None
    #: the running deadline wait, moved by ``Engine.extend``
    timer: asyncio.Timeout | None = None
    extending: asyncio.Lock = field(default_factory=asyncio.Lock)


class _NoFault(Fault[Any]):
    """Stands in for the fault object of a record found by recovery (already finished)."""

    kind = "recovered"
    summary = "a fault recovered from the journal"
    params_model = FaultParams

    def __init__(self) -> None:
        super().__init__(FaultParams())

    async def inject(self, sessions: SessionFactory) -> None:  # pragma: no cover - never injected
        raise AssertionError("a recovered record is never injected")


class Engine:
    """Runs faults against targets. Build one per server (or CLI run) and ``close()`` it."""

    def __init__(
        self,
        settings: Settings,
        targets: Mapping[str, Target],
        registry: Registry,
        *,
        instance: str | None = None,
        graphs: Mapping[str, RevisionGraph] | None = None,
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.audit = audit
        self.settings = settings
        self.targets = dict(targets)
        self._configured = frozenset(self.targets)
        self.registry = registry
        self.graphs = dict(graphs or {})
        self.instance = instance or uuid.uuid4().hex[:12]
        self.owner_key = owner_key(self.instance)
        self._faults: OrderedDict[str, _Managed] = OrderedDict()
        self._channels: dict[str, ControlChannel] = {}
        self._spares: dict[str, SparePool] = {}
        self._reuse: dict[str, ReusePool] = {}
        self._opted_in_at: dict[str, float] = {}
        self._monitor: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._closed = False
        self.metrics = metrics
        #: fault state changes (topic ``fault``) for SSE streams and webhooks (docs/events.md)
        self.events = EventBus()
        if settings.webhooks:
            self.events.add_sink(
                WebhookSink(settings.webhooks, registry=metrics.registry if metrics is not None else None)
            )

    # ---- targets -------------------------------------------------------------------
    def target(self, name: str | None) -> Target:
        return targets_by_name(self.targets, name, self.settings.target_name)

    def add_target(self, target: Target) -> Target:
        """Register an ad-hoc target (the caller checked it is allowed); the same DSN again
        returns the one registered before."""
        known = self.targets.get(target.name)
        if known is not None:
            return known
        ad_hoc = len(self.targets) - len(self._configured)
        if ad_hoc >= MAX_AD_HOC_TARGETS:
            raise errors.CapacityReached(
                f"this server already serves {MAX_AD_HOC_TARGETS} ad-hoc targets; add the database to the targets "
                "file instead",
                code="too_many_ad_hoc_targets",
            )
        self.targets[target.name] = target
        return target

    def max_duration_s(self, target: Target) -> float:
        """The longest fault this server allows on ``target`` (its own maximum, if lower)."""
        limit = target.policy.max_duration_s
        return self.settings.max_duration_s if limit is None else min(limit, self.settings.max_duration_s)

    def max_faults(self, target: Target) -> int:
        """How many unfinished faults ``target`` may have at once."""
        limit = target.policy.max_faults
        return self.settings.max_faults_per_target if limit is None else min(limit, self.settings.max_faults_per_target)

    async def require_opt_in(self, target: Target, channel: ControlChannel) -> None:
        """403 ``target_not_opted_in`` unless the target carries the opt-in marker (or the
        operator started dbchaos with the loud bypass flag)."""
        if self.settings.allow_not_opted_in:
            return
        seen = self._opted_in_at.get(target.name)
        if seen is not None and time.monotonic() - seen <= OPT_IN_TTL_S:
            return
        state = await channel.run(optin.status)
        if not state.opted_in:
            self._opted_in_at.pop(target.name, None)
            raise errors.Forbidden(
                optin.not_opted_in_message(target.name, target.masked_dsn), code="target_not_opted_in", field="target"
            )
        self._opted_in_at[target.name] = time.monotonic()

    @staticmethod
    def check_objects(target: Target, fault: Fault[Any]) -> None:
        """403 ``denied_object`` if the fault acts on a schema or table the target's policy refuses."""
        for obj in fault.objects():
            why = target.policy.refusal(obj)
            if why is not None:
                raise errors.Forbidden(
                    f"{why}: target {target.name!r} does not allow faults on it",
                    code="denied_object",
                    field="params",
                    extra={"object": obj},
                )

    def channel(self, target: Target) -> ControlChannel:
        ch = self._channels.get(target.name)
        if ch is None:
            ch = ControlChannel(
                target,
                self.instance,
                connect_timeout_s=self.settings.connect_timeout_s,
                owner_key=self.owner_key,
                audit=self.audit,
            )
            self._channels[target.name] = ch
        return ch

    # ---- queries -------------------------------------------------------------------
    def get(self, fault_id: str) -> FaultRecord:
        m = self._faults.get(fault_id)
        if m is None:
            raise errors.NotFound(f"no fault with id {fault_id!r}", code="unknown_fault")
        return m.record

    def all(self) -> list[FaultRecord]:
        return [m.record for m in self._faults.values()]

    def unfinished(self, target: str | None = None) -> list[FaultRecord]:
        return [
            m.record
            for m in self._faults.values()
            if not m.record.state.finished and (target is None or m.record.target == target)
        ]

    async def impacts(self, records: Iterable[FaultRecord]) -> dict[str, Impact]:
        """Live impact of the active faults among ``records`` (one snapshot per target)."""
        by_target: dict[str, list[FaultRecord]] = {}
        for r in records:
            if r.state in (State.ACTIVE, State.PENDING) and r.pids:
                by_target.setdefault(r.target, []).append(r)
        out: dict[str, Impact] = {}
        for name, recs in by_target.items():
            ch = self.channel(self.target(name))
            # the locks of every unfinished fault on the target, not only of these: the channel
            # keeps a snapshot for its TTL, and one that covers them all serves every status call
            # meanwhile (one per fault would read pg_locks once per GET /v1/faults/{id})
            pids = {p for r in recs for p in r.pids} | {p for r in self.unfinished(name) for p in r.pids}
            try:
                snap = await ch.snapshot(pids)
            except (errors.DbChaosError, psycopg.Error) as exc:
                _log.warning("cannot observe target %s: %s", name, getattr(exc, "message", exc))
                continue
            for r in recs:
                imp = impact_of(snap, r.pids)
                r.max_blocked = max(r.max_blocked, imp.blocked_count)
                out[r.id] = imp
        return out

    async def drift(self, rec: FaultRecord) -> list[str]:
        """For an active journaled fault: what someone changed since it set its state."""
        m = self._faults.get(rec.id)
        if m is None or rec.state is not State.ACTIVE:
            return []
        try:
            return await m.channel.run(m.fault.drift)
        except (errors.DbChaosError, psycopg.Error):
            return []

    # ---- lifecycle -----------------------------------------------------------------
    def _duration(self, value: float | None, target: Target) -> float:
        limit = self.max_duration_s(target)
        d = min(self.settings.default_duration_s, limit) if value is None else value
        if not isinstance(d, int | float) or isinstance(d, bool) or not math.isfinite(d) or d <= 0:
            raise errors.InvalidInput("duration_s must be a positive number of seconds", field="duration_s")
        if d > limit:
            whose = (
                f"target {target.name!r}'s maximum"
                if target.policy.max_duration_s is not None
                and target.policy.max_duration_s < self.settings.max_duration_s
                else "this server's maximum"
            )
            raise errors.InvalidInput(
                f"duration_s {d:g} is over {whose} of {limit:g} s",
                code="duration_too_long",
                field="duration_s",
                extra={"max_duration_s": limit},
            )
        return float(d)

    def _acquire(self, value: float | None) -> float:
        a = self.settings.default_acquire_timeout_s if value is None else value
        if (
            not isinstance(a, int | float)
            or isinstance(a, bool)
            or not math.isfinite(a)
            or not 0 <= a <= MAX_ACQUIRE_TIMEOUT_S
        ):
            raise errors.InvalidInput(
                f"acquire_timeout_s must be between 0 and {MAX_ACQUIRE_TIMEOUT_S:g} seconds",
                field="acquire_timeout_s",
            )
        return float(a)

    @staticmethod
    def _labels(value: Mapping[str, str] | None) -> dict[str, str]:
        labels = dict(value or {})
        if len(labels) > MAX_LABELS or any(
            not isinstance(k, str) or not isinstance(v, str) or len(k) > 64 or len(v) > 256 for k, v in labels.items()
        ):
            raise errors.InvalidInput(
                f"labels are at most {MAX_LABELS} string pairs (keys up to 64, values up to 256 characters)",
                field="labels",
            )
        bad = bad_text(labels, "labels")  # they end up in answers, the audit trail and session tags
        if bad is not None:
            raise bad
        return labels

    async def create(self, req: FaultRequest, *, wait: bool = True) -> FaultRecord:
        """Validate, prepare and start a fault. With ``wait``, return once it is active
        (or raise the reason it could not be acquired)."""
        v = self.validate(req)
        fault, target, duration, acquire, labels = v.fault, v.target, v.duration_s, v.acquire_timeout_s, v.labels
        channel = self.channel(target)
        await self.check_usable(target, channel)
        fault_id = new_fault_id(self.instance)  # its sessions name this instance (engine/ownership.py)
        fault.env = FaultEnv(fault_id, self.instance, self.owner_key, duration, self.graphs.get(target.name))
        sessions = SessionFactory(
            target,
            fault_id,
            Bounds(acquire, duration, self.settings.server_side_grace_s),
            channel.server_version_num,
            connect_timeout_s=self.settings.connect_timeout_s,
            audit=self.audit,
        )
        sessions.reuse = self._reuse_pool(target)
        if fault.connect_early:
            sessions.spares = self._spare_pool(target)
            sessions.connect_early()  # a warm session is bound, or one opens, while the look-ups run
        try:
            await self.admit(fault, target, channel, lambda: channel.run(fault.prepare))
        except BaseException:
            await sessions.release_all()
            raise
        record = FaultRecord(
            id=fault_id,
            kind=fault.kind,
            target=target.name,
            params=fault.describe_params(),
            duration_s=duration,
            acquire_timeout_s=acquire,
            labels=labels,
            created_at=time.time(),
        )
        m = _Managed(record, fault, sessions, channel)
        self._faults[fault_id] = m
        self._trim_history()
        self._publish(record, "created")
        m.task = asyncio.create_task(self._run(m), name=f"fault-{fault_id}")
        self._ensure_monitor()
        if wait:
            await m.settled.wait()
            if record.state is State.FAILED:
                # the same class as the failure (403 stays 403), with the full message
                cls = type(m.error) if m.error is not None else errors.Conflict
                raise cls(
                    record.error or "the fault could not be injected",
                    code=record.error_code,
                    extra={**(m.error.extra if m.error is not None else {}), "fault_id": fault_id},
                )
        return record

    # ---- the checks create and dry_run share ---------------------------------------
    def validate(self, req: FaultRequest) -> Validated:
        """Every check of ``req`` that needs no database: kind and params, target, duration,
        acquire timeout, labels, the cap."""
        if self._closed:
            raise errors.Conflict("dbchaos is shutting down", code="shutting_down")
        fault = self.registry.build(req.kind, req.params)
        target = self.target(req.target)
        duration = self._duration(req.duration_s, target)
        acquire = self._acquire(req.acquire_timeout_s)
        labels = self._labels(req.labels)
        self._check_cap(target)
        if isinstance(fault, ConnectionExhaustion):
            fault.reserve = target.policy.connection_reserve
        return Validated(fault, target, duration, acquire, labels)

    async def check_usable(self, target: Target, channel: ControlChannel) -> None:
        """502 unless faults can run on ``target`` (version, replica, read-only); 403 unless it opted in."""
        check = await channel.check(max_age_s=CHECK_TTL_S)
        check.raise_if_unusable()
        await self.require_opt_in(target, channel)

    async def admit(
        self, fault: Fault[Any], target: Target, channel: ControlChannel, prepare: Callable[[], Awaitable[T]]
    ) -> T:
        """Run ``prepare`` (which resolves the request through the catalog), then the checks
        that need its answers: the target's policy on the objects, the cap again. A refused
        privilege names the grant to add."""
        try:
            out = await prepare()
            self.check_objects(target, fault)
            self._check_cap(target)
        except (psycopg.errors.InsufficientPrivilege, errors.Forbidden) as exc:
            raise await privileges.explain(channel, fault, exc) from None
        except psycopg.Error as exc:  # e.g. a catalog read met a lock held by someone else (lock_timeout)
            raise translate(exc, f"{fault.kind} could not be prepared") from None
        return out

    async def dry_run(self, req: FaultRequest) -> DryRun:
        """What :meth:`create` would do for ``req``, checked the same way, changing nothing
        (``?dry_run=true``, ``--dry-run``; see :mod:`dbchaos.engine.dryrun`)."""
        return await plan_dry_run(self, self.validate(req))

    def _check_cap(self, target: Target) -> None:
        cap = self.max_faults(target)
        if len(self.unfinished(target.name)) >= cap:
            raise errors.CapacityReached(
                f"target {target.name!r} already has {cap} faults running "
                "(the per-target cap); abort some or wait for their deadlines"
            )

    def _trim_history(self) -> None:
        if len(self._faults) <= HISTORY_LIMIT:
            return
        for fid in [fid for fid, m in self._faults.items() if m.record.state.finished][
            : len(self._faults) - HISTORY_LIMIT
        ]:
            del self._faults[fid]

    async def _run(self, m: _Managed) -> None:
        rec = m.record
        try:
            acquired = await self._acquire_fault(m)
            if not acquired:
                return
            now = time.time()
            rec.activated_at = now
            rec.deadline = now + rec.duration_s
            rec.pids = m.sessions.pids
            rec.details = m.fault.details()
            rec.state = State.ACTIVE
            if self.metrics is not None:
                self.metrics.activated(rec)
            self._publish(rec, "active")
            m.settled.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, rec.deadline - time.time())) as m.timer:
                    await m.stop.wait()
            reason = m.stop_reason if m.stop.is_set() else EndReason.DEADLINE
            stopped = time.monotonic()
            await self._revert(m, reason)
            if self.metrics is not None:
                self.metrics.reverted(rec, time.monotonic() - stopped)
        except asyncio.CancelledError:
            await m.sessions.release_all()
            self._finish(m, State.REVERTED, EndReason.SHUTDOWN)
            raise
        except Exception as exc:  # never leave a session behind, whatever happened
            _log.exception("fault %s crashed", rec.id)
            await m.sessions.release_all()
            self._finish(m, State.FAILED, EndReason.ERROR, error=f"internal error: {exc}")

    async def _acquire_fault(self, m: _Managed) -> bool:
        """Run the kind's inject; True once it holds everything, False if it ended."""
        rec = m.record
        watch = asyncio.create_task(self._watch_blockers(m))
        inject = asyncio.create_task(m.fault.inject(m.sessions))
        stopper = asyncio.create_task(m.stop.wait())
        limit = rec.acquire_timeout_s + self.settings.connect_timeout_s + 5.0
        try:
            done, _ = await asyncio.wait({inject, stopper}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
            if inject in done:
                inject.result()
                return True
            inject.cancel()
            await asyncio.gather(inject, return_exceptions=True)
            await m.sessions.release_all()
            if m.stop.is_set():  # aborted while still acquiring: nothing is held
                self._finish(m, State.REVERTED, m.stop_reason)
            else:
                self._fail(m, errors.LockNotAcquired(f"could not inject within {limit:g} s"))
            return False
        except errors.DbChaosError as exc:
            await m.sessions.release_all()
            self._fail(m, await privileges.explain(m.channel, m.fault, exc))
            return False
        except psycopg.Error as exc:
            await m.sessions.release_all()
            err = translate(exc, f"{rec.kind} could not be injected")
            self._fail(m, await privileges.explain(m.channel, m.fault, err))  # 42501: names the grant to add
            return False
        finally:
            stopper.cancel()
            watch.cancel()
            await asyncio.gather(watch, stopper, return_exceptions=True)

    async def _watch_blockers(self, m: _Managed) -> None:
        """While acquiring, remember who is in the way (for the failure report)."""
        await asyncio.sleep(0.02)
        while True:
            pids = m.sessions.pids
            if pids:
                with contextlib.suppress(errors.DbChaosError, psycopg.Error):
                    snap = await m.channel.snapshot(pids, max_age_s=0.05)
                    found = []
                    for pid in pids:
                        s = snap.sessions.get(pid)
                        for b in s.blocked_by if s else ():
                            if b in pids:  # a fault's own sessions (e.g. a lock queue) are not "in the way"
                                continue
                            bs = snap.sessions.get(b)
                            found.append(
                                {
                                    "pid": b,
                                    "user": bs.user if bs else None,
                                    "application_name": bs.application_name if bs else None,
                                    "state": bs.state if bs else None,
                                    "query": bs.query if bs else None,
                                }
                            )
                    if found:
                        m.record.blockers = found
            await asyncio.sleep(0.1)

    def _fail(self, m: _Managed, exc: errors.DbChaosError) -> None:
        msg = exc.message
        if m.record.blockers:
            who = "; ".join(
                f"pid {b['pid']} ({b.get('application_name') or 'no application_name'}, user {b.get('user')}, "
                f"{b.get('state')}: {(b.get('query') or '')[:80]!r})"
                for b in m.record.blockers
            )
            msg = f"{msg}; in the way: {who}"
        m.error = exc
        m.record.error_code = exc.code
        m.record.failed_during = "inject"
        self._finish(m, State.FAILED, EndReason.ERROR, error=msg)

    async def _revert(self, m: _Managed, reason: EndReason) -> None:
        rec = m.record
        rec.state = State.REVERTING
        self._publish(rec, "reverting")
        release = asyncio.create_task(m.fault.revert(m.sessions, reason))
        killed = False
        if m.force_kill_after_s is not None:
            done, _ = await asyncio.wait({release}, timeout=m.force_kill_after_s)
            if not done:
                with contextlib.suppress(errors.DbChaosError, psycopg.Error):
                    await m.channel.terminate(rec.pids)
                killed = True
        try:
            outcome = await release
        except Exception as exc:
            _log.exception("revert of %s failed", rec.id)
            rec.failed_during = "revert"
            self._finish(m, State.FAILED, EndReason.ERROR, error=f"revert failed: {getattr(exc, 'message', exc)}")
            return
        rec.details.update(outcome.details)
        if killed:
            self._finish(m, State.REVERTED, EndReason.KILLED)
        elif outcome.state is State.LOST:
            lost_reason = EndReason.ERROR if reason is EndReason.DEADLINE else reason
            self._finish(m, State.LOST, lost_reason, error=outcome.error)
        else:
            if outcome.state is State.FAILED:
                rec.failed_during = "revert"
            self._finish(m, outcome.state, reason, error=outcome.error)

    def _finish(self, m: _Managed, state: State, reason: EndReason, *, error: str | None = None) -> None:
        rec = m.record
        if rec.state.finished:
            return
        rec.state = state
        rec.end_reason = reason
        rec.ended_at = time.time()
        if error:
            rec.error = error
        if self.metrics is not None:
            self.metrics.finished(rec)
        self._publish(rec, state.value)
        m.settled.set()

    def _publish(self, rec: FaultRecord, event: str, **extra: Any) -> None:
        self.events.publish(TOPIC_FAULT, fault_data(rec, event, **extra))

    # ---- control -------------------------------------------------------------------
    async def abort(
        self,
        fault_id: str,
        *,
        reason: EndReason = EndReason.ABORTED,
        force_kill_after_s: float | None = None,
        wait: bool = True,
    ) -> FaultRecord:
        """End a fault now and release what it holds. A finished fault is returned as it is."""
        m = self._faults.get(fault_id)
        if m is None:
            raise errors.NotFound(f"no fault with id {fault_id!r}", code="unknown_fault")
        if not m.record.state.finished and not m.stop.is_set():
            m.stop_reason = reason
            m.force_kill_after_s = force_kill_after_s
            m.stop.set()
        if wait and m.task is not None:
            await asyncio.shield(m.task)
        return m.record

    async def extend(
        self,
        fault_id: str,
        *,
        duration_s: float | None = None,
        extend_by_s: float | None = None,
        deadline: float | None = None,
    ) -> FaultRecord:
        """Move an active fault's deadline (``PATCH /v1/faults/{id}``; exactly one of:
        ``duration_s`` counted from activation, ``extend_by_s`` added to the deadline, or an
        absolute ``deadline``). The sessions' server-side timeouts move first, so PostgreSQL
        never ends an extended fault early, and a shortened one is bounded as tightly as a
        fault started that short (see :func:`dbchaos.engine.deadline.moved_deadline`)."""
        m = self._faults.get(fault_id)
        if m is None:
            raise errors.NotFound(f"no fault with id {fault_id!r}", code="unknown_fault")
        async with m.extending:
            rec = m.record
            check_movable(rec, stopping=m.stop.is_set())
            target = self.target(rec.target)
            held_statement = bool(m.sessions.busy)
            limit = self.max_duration_s(target)
            new = moved_deadline(
                rec,
                duration_s=duration_s,
                extend_by_s=extend_by_s,
                deadline=deadline,
                now=time.time(),
                max_duration_s=min(limit, m.fault.env.duration_s) if held_statement else limit,
                why_max=held_statement_why(m.fault.env.duration_s) if held_statement else None,
            )
            not_moved = await m.sessions.move_bounds(new.deadline - time.time(), new.duration_s)
            for pid, why in not_moved.items():
                _log.warning("fault %s: could not move the timeouts of session %d: %s", rec.id, pid, why)
            check_movable(rec, stopping=m.stop.is_set())
            try:
                assert m.timer is not None
                m.timer.reschedule(asyncio.get_running_loop().time() + max(0.0, new.deadline - time.time()))
            except RuntimeError:  # the deadline fired while the sessions were being changed
                raise errors.Conflict(
                    f"fault {rec.id} reached its deadline meanwhile", code="fault_not_active"
                ) from None
            previous = rec.deadline
            rec.deadline, rec.duration_s = new.deadline, new.duration_s
            self._publish(rec, "extended", previous_deadline=rfc3339(previous))
            return rec

    async def reset(self, reason: EndReason = EndReason.RESET) -> list[FaultRecord]:
        """End every fault this instance owns; returns them."""
        ids = [m.record.id for m in self._faults.values() if not m.record.state.finished]
        return list(await asyncio.gather(*(self.abort(i, reason=reason) for i in ids)))

    def _ensure_monitor(self) -> None:
        if self._monitor is None or self._monitor.done():
            self._monitor = asyncio.create_task(self._monitor_loop(), name="dbchaos-monitor")

    async def _monitor_loop(self) -> None:
        """Notice faults whose sessions PostgreSQL ended (target restart, timeouts, kills)."""
        while not self._closed:
            await asyncio.sleep(MONITOR_INTERVAL_S)
            active = [m for m in self._faults.values() if m.record.state is State.ACTIVE]
            if not active:
                if not self.unfinished():
                    return
                continue
            by_target: dict[str, list[_Managed]] = {}
            for m in active:
                by_target.setdefault(m.record.target, []).append(m)
            for ms in by_target.values():
                pids = {p for m in ms for p in m.record.pids}
                snap: Snapshot | None = None
                try:
                    snap = await ms[0].channel.snapshot(pids, max_age_s=MONITOR_INTERVAL_S / 2)
                except (errors.DbChaosError, psycopg.Error):
                    gone = ms  # the target is down: their sessions are gone with it
                else:
                    gone = [m for m in ms if any(p not in snap.sessions for p in m.record.pids)]
                    for m in ms:
                        imp = impact_of(snap, m.record.pids)
                        m.record.max_blocked = max(m.record.max_blocked, imp.blocked_count)
                for m in gone:
                    if m.record.state is State.ACTIVE and not m.stop.is_set():
                        for s in m.sessions.sessions:
                            s.alive = False
                        m.stop_reason = EndReason.ERROR
                        m.stop.set()
                if snap is not None:
                    await self._halt_if_tripped(ms, snap)

    async def _halt_if_tripped(self, active: list[_Managed], snap: Snapshot) -> None:
        """Revert every unfinished fault on the target of ``active`` (its active faults) when
        one of its halt rules is over its limit in ``snap`` (docs/guard-rails.md)."""
        name = active[0].record.target
        target = self.targets.get(name)
        rules = halt.effective_rules(target.policy.halt, self.settings) if target is not None else None
        if rules is None or not rules.any:
            return
        check = active[0].channel.last_check
        trip = halt.evaluate(
            rules,
            snap,
            [m.record for m in active],
            now=time.time(),
            max_connections=check.max_connections if check is not None else None,
        )
        if trip is None:
            return
        victims = [
            m
            for m in self._faults.values()
            if m.record.target == name and m.record.state in (State.PENDING, State.ACTIVE) and not m.stop.is_set()
        ]
        if not victims:
            return
        _log.warning("%s: reverting %d fault(s)", trip.describe(name), len(victims))
        if self.metrics is not None:
            self.metrics.halted(name, trip.rule)
        if self.audit is not None:
            self.audit.record(
                {"type": "halt", "target": name, **trip.as_dict(), "fault_ids": [m.record.id for m in victims]}
            )
        for m in victims:
            m.record.halted_by = trip.as_dict()
            await self.abort(m.record.id, reason=EndReason.HALTED, wait=False)

    # ---- recovery ------------------------------------------------------------------
    async def recover(self, target_name: str | None = None) -> list[FaultRecord]:
        """Revert the journal entries on a target whose owner is gone; returns them as
        finished faults (end reason ``recovered``)."""
        target = self.target(target_name)
        # never through a pooling proxy: its owner locks and session settings would leak (targets.py)
        (await self.channel(target).check(max_age_s=CHECK_TTL_S)).raise_if_unusable()
        found = await recover(
            target,
            self.instance,
            self.owner_key,
            connect_timeout_s=self.settings.connect_timeout_s,
            own_in_progress=lambda fid: fid in self._faults and not self._faults[fid].record.state.finished,
            cursor_factory=self.audit.cursor_factory("recover", target.name) if self.audit is not None else None,
        )
        out: list[FaultRecord] = []
        now = time.time()
        for r in found:
            rec = FaultRecord(
                id=r.entry.fault_id,
                kind=r.entry.kind,
                target=target.name,
                params={},
                duration_s=0.0,
                acquire_timeout_s=0.0,
                labels={"recovered_from": r.entry.owner},
                created_at=r.entry.created_at,
                state=r.outcome.state,
                end_reason=EndReason.RECOVERED,
                ended_at=now,
                error=r.outcome.error,
                details=dict(r.outcome.details),
            )
            if r.entry.fault_id in self._faults:  # one of ours whose revert had given up
                mine = self._faults[r.entry.fault_id].record
                mine.state, mine.error = r.outcome.state, r.outcome.error
                mine.details.update(r.outcome.details)
                self._publish(mine, mine.state.value)
            else:
                self._faults[rec.id] = _Managed(
                    rec, _NoFault(), SessionFactory(target, rec.id, Bounds(0, 0, 0), 0), self.channel(target)
                )
                self._publish(rec, rec.state.value)
            out.append(rec)
        return out

    def start_recovery(self) -> None:
        """Recover every target now and every ``RECOVERY_INTERVAL_S`` (in the background)."""
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recovery_loop(), name="dbchaos-recovery")

    async def _recovery_loop(self) -> None:
        while not self._closed:
            pending = False
            for name in self.targets:
                try:
                    recs = await self.recover(name)
                except (errors.DbChaosError, psycopg.Error, OSError) as exc:
                    pending = True
                    _log.info("recovery on %s postponed: %s", name, getattr(exc, "message", exc))
                    continue
                for r in recs:
                    _log.warning("recovered fault %s (%s) on %s: %s", r.id, r.kind, name, r.state.value)
            await asyncio.sleep(RECOVERY_RETRY_S if pending else RECOVERY_INTERVAL_S)

    def _spare_pool(self, target: Target) -> SparePool:
        pool = self._spares.get(target.name)
        if pool is None:
            pool = SparePool(target, self.instance, connect_timeout_s=self.settings.connect_timeout_s, audit=self.audit)
            self._spares[target.name] = pool
        return pool

    def _reuse_pool(self, target: Target) -> ReusePool:
        pool = self._reuse.get(target.name)
        if pool is None:
            pool = ReusePool(target, self.instance, connect_timeout_s=self.settings.connect_timeout_s, audit=self.audit)
            self._reuse[target.name] = pool
        return pool

    async def close(self) -> None:
        """Revert everything (end reason ``shutdown``) and close control sessions."""
        await self.reset(EndReason.SHUTDOWN)
        self._closed = True
        for task in (self._monitor, self._recovery):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for pool in self._spares.values():
            await pool.close()
        for reused in self._reuse.values():
            await reused.close()
        await self.events.close()
        for ch in self._channels.values():
            with contextlib.suppress(Exception):
                await ch.close()
