"""Guided game days: scripted walkthroughs that inject a fault, let the user observe, ask
them to act, and check the result against the live lab.

A game day is data: a list of steps. A small engine runs one game day at a time:

* ``inject`` steps run at once (optionally switching the shop's mode first) and start a
  fault through the engine, exactly as ``POST /v1/faults`` would;
* ``observe`` steps wait for the user to say they have seen it;
* ``act`` steps are checked each time the dashboard asks (about once a second) — the check
  reads the lab's state (the shop's sessions, the version table, the traffic series) and
  the step passes as soon as what the user did shows there;
* the ``done`` step ends the run and reverts whatever fault of the game day still holds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dbchaos import errors
from dbchaos.api.context import AppContext
from dbchaos.engine.engine import FaultRequest
from dbchaos.engine.model import EndReason
from dbchaos.faults.migration.diagnosis import AT_HEAD, diagnose
from dbchaos.lab.demo.config import Mode
from dbchaos.lab.democonfig import set_mode
from dbchaos.lab.shopdb import TARGET_NAME

if TYPE_CHECKING:
    from dbchaos.lab.context import Lab

#: (passed, what the user should know now)
Verdict = tuple[bool, str]
Check = Callable[["GameRun", "Lab", AppContext], Awaitable[Verdict]]


@dataclass(frozen=True)
class Step:
    kind: str  # inject | observe | act | done
    title: str
    text: str
    #: inject: the fault to start (kind, params, duration_s)
    fault: Mapping[str, Any] | None = None
    #: inject: the shop's mode to set first
    mode: Mode | None = None
    #: act: what the user should use in the dashboard
    hint: str = ""
    check: Check | None = None


@dataclass(frozen=True)
class GameDay:
    id: str
    title: str
    summary: str
    steps: tuple[Step, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "summary": self.summary,
            "steps": [{"kind": s.kind, "title": s.title} for s in self.steps],
        }


@dataclass
class GameRun:
    """One game day being played."""

    gameday: GameDay
    started_at: float = field(default_factory=time.time)
    step: int = 0
    step_started_at: float = field(default_factory=time.time)
    fault_id: str | None = None
    status: str = ""
    finished_at: float | None = None
    #: step index -> when it passed
    passed: dict[int, float] = field(default_factory=dict)
    #: what each passed step's check found (shown under the steps)
    log: list[str] = field(default_factory=list)

    @property
    def current(self) -> Step:
        return self.gameday.steps[self.step]

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def view(self) -> dict[str, Any]:
        step = self.current
        return {
            "id": self.gameday.id,
            "title": self.gameday.title,
            "started_at": self.started_at,
            "finished": self.finished,
            "finished_at": self.finished_at,
            "fault_id": self.fault_id,
            "step": self.step,
            "current": {"kind": step.kind, "title": step.title, "text": step.text, "hint": step.hint},
            "status": self.status,
            "log": list(self.log),
            "steps": [
                {
                    "kind": s.kind,
                    "title": s.title,
                    "state": "done" if i in self.passed else "current" if i == self.step else "pending",
                }
                for i, s in enumerate(self.gameday.steps)
            ],
        }


# ---------------------------------------------------------------- checks (read the live lab)
def _fault_state(run: GameRun, ctx: AppContext) -> tuple[str | None, str | None]:
    if run.fault_id is None:
        return None, None
    rec = ctx.engine.get(run.fault_id)
    return rec.state.value, rec.end_reason.value if rec.end_reason else None


async def blocker_ended(run: GameRun, lab: Lab, ctx: AppContext) -> Verdict:
    """The fault's session was ended by the user (not by its deadline) and nothing waits."""
    state, reason = _fault_state(run, ctx)
    tree = await lab.watch.lock_tree()
    waiting = len(tree["blocked"])
    if state in ("active", "pending", "reverting"):
        roots = ", ".join(str(r["pid"]) for r in tree["roots"]) or "none right now"
        return False, f"{waiting} session(s) wait on a lock; the root of the tree is pid {roots}."
    if reason == EndReason.DEADLINE.value:
        return False, "The fault ran out before you ended it (it reached its deadline). Abort and try again."
    if waiting:
        return False, f"The blocker is gone, but {waiting} session(s) still wait; give it a second."
    return True, "The blocker's session is gone and no session waits on a lock any more."


def _after_step(run: GameRun, deploy: dict[str, Any] | None) -> dict[str, Any] | None:
    if deploy is None or float(deploy.get("finished_at") or 0) < run.step_started_at:
        return None
    return deploy


async def deploy_failed(run: GameRun, lab: Lab, ctx: AppContext) -> Verdict:
    deploy = _after_step(run, lab.last_deploy)
    if deploy is None:
        return False, "Waiting for a deploy: press Deploy in the Migrations panel."
    if deploy["ok"]:
        return False, "That deploy went through (was the fault already reverted?). Abort and start again."
    first = next((ln for ln in reversed(deploy["output"].splitlines()) if ln.strip()), "")
    return True, f"The deploy failed (exit {deploy['returncode']}): {first}"


async def version_at_head(run: GameRun, lab: Lab, ctx: AppContext) -> Verdict:
    target = ctx.target(TARGET_NAME)
    diagnosis = await diagnose(target, ctx.engine.graphs.get(target.name))
    if diagnosis.state == AT_HEAD:
        return True, f"alembic_version holds {', '.join(diagnosis.stored or [])}, the code's head."
    return False, f"The migration panel says '{diagnosis.state}': {diagnosis.summary}"


async def deploy_succeeded(run: GameRun, lab: Lab, ctx: AppContext) -> Verdict:
    deploy = _after_step(run, lab.last_deploy)
    if deploy is None:
        return False, "Waiting for a deploy: press Deploy again."
    if deploy["ok"] and deploy["restarted"]:
        return True, f"Deployed and restarted in {deploy['duration_s']:.1f} s."
    return False, f"That deploy failed too (exit {deploy['returncode']}); look at the panel's state and repair first."


#: seconds of clean traffic that count as "the shop answers fast again"
CLEAN_SECONDS = 3
FAST_P95_MS = 1500.0


async def hardened_and_fast(run: GameRun, lab: Lab, ctx: AppContext) -> Verdict:
    if lab.demo.mode is not Mode.HARDENED:
        return False, "The shop is still naive: use the Naive / Hardened switch in the Live panel."
    recent = lab.series.buckets(time.time() - CLEAN_SECONDS - 1)[-CLEAN_SECONDS:]
    slow = [b for b in recent if b.requests == 0 or (b.as_dict()["p95_ms"] or 0) > FAST_P95_MS]
    if len(recent) < CLEAN_SECONDS or slow:
        return False, "Hardened. Requests that were already waiting still drain; watch p95 come down …"
    worst = max(b.as_dict()["p95_ms"] or 0 for b in recent)
    return (
        True,
        f"Hardened: p95 is {worst:.0f} ms at worst over the last {CLEAN_SECONDS} s, while the lock is still held.",
    )


# ---------------------------------------------------------------- the game days
def _p(**kw: Any) -> Mapping[str, Any]:
    return MappingProxyType(kw)


GAMEDAYS: tuple[GameDay, ...] = (
    GameDay(
        id="idle-transaction",
        title="The idle transaction",
        summary=(
            "A worker locked the best-selling items and went idle in its transaction. Orders hang, then the whole "
            "naive shop runs out of connections. Find the blocker and end it."
        ),
        steps=(
            Step(
                "inject",
                "A worker locks the ten best-selling items and goes idle",
                "The shop is switched to naive and a transaction takes FOR UPDATE on items 1-10, then does nothing.",
                fault=_p(
                    kind="row-lock", params={"table": "items", "strength": "FOR UPDATE", "limit": 10}, duration_s=180
                ),
                mode=Mode.NAIVE,
            ),
            Step(
                "observe",
                "Watch the shop",
                "Every order contains a best-seller, so POST /orders hangs on the locked rows. Watch requests in "
                "flight climb and, after the pool timeout, QueuePool errors spread to endpoints that never touch "
                "those rows. Blocked sessions show the waits. Continue when you have seen it.",
            ),
            Step(
                "act",
                "Find the blocker and end it",
                "In 'Who blocks whom', the root of the tree is the session everyone waits on: idle in transaction, "
                "holding row locks on items. End it. (Ending one of the waiting sessions does not help.)",
                hint="Who blocks whom → End session on the root",
                check=blocker_ended,
            ),
            Step(
                "done",
                "Recovered",
                "Its transaction rolled back, the rows are free, and the queued orders went through. In production "
                "the same move is SELECT pg_terminate_backend(pid). Better still, idle_in_transaction_session_timeout "
                "on the application's role (the hardened shop uses 5 s) ends such a session by itself.",
            ),
        ),
    ),
    GameDay(
        id="deploy-never-finished",
        title="The deploy that never finished",
        summary=(
            "A botched rollback left alembic_version naming a revision that exists nowhere. The next deploy fails. "
            "Read what Alembic says, repair the version table, deploy again."
        ),
        steps=(
            Step(
                "inject",
                "The version table points at a revision nobody has",
                "alembic_version now holds an id that is in none of the shop's migration scripts.",
                fault=_p(kind="unknown-revision", params={}, duration_s=600),
            ),
            Step(
                "act",
                "Deploy",
                "Run the deploy (alembic upgrade head, then a restart) and read Alembic's answer. Note that the shop "
                "keeps serving: its tables are fine, only the deploy is stuck.",
                hint="Migrations → Deploy",
                check=deploy_failed,
            ),
            Step(
                "act",
                "Repair the version table",
                "The schema is at the code's head; only the record is wrong. Stamp it: alembic stamp --purge head "
                "(plain stamp head fails, because it reads the unknown id first). The migration panel must say "
                "'at head'.",
                hint="Migrations → alembic stamp --purge head",
                check=version_at_head,
            ),
            Step(
                "act",
                "Deploy again",
                "With the version table repaired, the deploy must go through.",
                hint="Migrations → Deploy",
                check=deploy_succeeded,
            ),
            Step(
                "done",
                "Deployed",
                "When the fault ends, dbchaos finds your repair in place, keeps it and marks the fault "
                "'superseded': a success for the team. The lasting fix: never edit alembic_version by hand, and "
                "check before deploying that the database's revision is one the code knows.",
            ),
        ),
    ),
    GameDay(
        id="one-read",
        title="One read took the site down",
        summary=(
            "An idle report transaction and a migration's ALTER TABLE waiting behind it: every query on items "
            "queues. Keep the outage, change the service: switch to hardened."
        ),
        steps=(
            Step(
                "inject",
                "A report reads items and sits idle; a migration queues behind it",
                "The shop is switched to naive. One session read items and went idle in transaction; a pretend "
                "migration waits for ACCESS EXCLUSIVE on items behind it.",
                fault=_p(kind="migration-lock-queue", params={"table": "items"}, duration_s=180),
                mode=Mode.NAIVE,
            ),
            Step(
                "observe",
                "Watch the site go down",
                "Nobody holds more than a read, yet every new query on items waits behind the migration's lock "
                "request, the pool runs dry and every endpoint fails. The lock tree has two levels. Continue when "
                "you have seen it.",
            ),
            Step(
                "act",
                "Switch the shop to hardened",
                "This time leave the blocker alone: change what the service does under it. Switch to hardened "
                "(lock_timeout 500 ms, short pool timeout, 503 with Retry-After) and watch p95 come down while the "
                "lock is still held.",
                hint="Live → Hardened",
                check=hardened_and_fast,
            ),
            Step(
                "done",
                "Fast failures instead of an outage",
                "Queries on items now fail in half a second with 55P03 and the service answers 503 at once; the rest "
                "of the shop keeps working. The real fix sits in the deploy: SET lock_timeout = '2s' for migrations, "
                "retried with backoff, and idle_in_transaction_session_timeout for the report's role.",
            ),
        ),
    ),
)


class GameDays:
    """One game day at a time, for the lab's dashboard."""

    def __init__(self, gamedays: tuple[GameDay, ...] = GAMEDAYS) -> None:
        self._gamedays = {g.id: g for g in gamedays}
        self.run: GameRun | None = None

    def catalogue(self) -> list[dict[str, Any]]:
        return [g.as_dict() for g in self._gamedays.values()]

    def _require_run(self) -> GameRun:
        if self.run is None:
            raise errors.NotFound("no game day is being played", code="no_gameday")
        return self.run

    async def start(self, gameday_id: str, lab: Lab, ctx: AppContext) -> dict[str, Any]:
        gameday = self._gamedays.get(gameday_id)
        if gameday is None:
            raise errors.NotFound(f"no game day {gameday_id!r}", code="unknown_gameday")
        if self.run is not None and not self.run.finished:
            raise errors.Conflict(
                f"the game day {self.run.gameday.title!r} is being played; abort it first", code="gameday_running"
            )
        self.run = GameRun(gameday)
        lab.event("gameday", f"game day started: {gameday.title}")
        await self._advance(lab, ctx)
        return self.run.view()

    async def current(self, lab: Lab, ctx: AppContext) -> dict[str, Any] | None:
        """The run's state; an ``act`` step is checked now and passes when its check holds."""
        run = self.run
        if run is None:
            return None
        step = run.current
        if not run.finished and step.kind == "act" and step.check is not None:
            ok, run.status = await step.check(run, lab, ctx)
            if ok:
                run.passed[run.step] = time.time()
                run.log.append(f"{step.title}: {run.status}")
                await self._next(lab, ctx)
        return run.view()

    async def proceed(self, lab: Lab, ctx: AppContext) -> dict[str, Any]:
        """The user has observed: move past an ``observe`` step."""
        run = self._require_run()
        if run.finished or run.current.kind != "observe":
            raise errors.Conflict("this step is not one to continue from", code="not_an_observe_step")
        run.passed[run.step] = time.time()
        await self._next(lab, ctx)
        return run.view()

    async def abort(self, lab: Lab, ctx: AppContext) -> dict[str, Any] | None:
        """Stop the game day (reverting its fault if it still holds) and clear it."""
        run = self.run
        if run is None:
            return None
        await self._revert(run, ctx)
        if not run.finished:
            lab.event("gameday", f"game day aborted: {run.gameday.title}")
        self.run = None
        return run.view()

    async def _next(self, lab: Lab, ctx: AppContext) -> None:
        run = self._require_run()
        run.step += 1
        run.step_started_at = time.time()
        run.status = ""
        await self._advance(lab, ctx)

    async def _advance(self, lab: Lab, ctx: AppContext) -> None:
        """Run every automatic step (inject, done) from the current one on."""
        run = self._require_run()
        while True:
            step = run.current
            if step.kind == "inject":
                await self._inject(run, step, lab, ctx)
                run.passed[run.step] = time.time()
                run.step += 1
                run.step_started_at = time.time()
                continue
            if step.kind == "done":
                run.passed[run.step] = time.time()
                run.finished_at = time.time()
                await self._revert(run, ctx)
                lab.event("gameday", f"game day finished: {run.gameday.title}")
            return

    async def _inject(self, run: GameRun, step: Step, lab: Lab, ctx: AppContext) -> None:
        if step.mode is not None and lab.demo.mode is not step.mode:
            await set_mode(lab, step.mode)
        assert step.fault is not None
        spec = step.fault
        req = FaultRequest(
            kind=str(spec["kind"]),
            params=dict(spec["params"]),
            duration_s=float(spec["duration_s"]),
            target=TARGET_NAME,
            labels={"gameday": run.gameday.id},
        )
        rec = await ctx.engine.create(req, wait=True)
        run.fault_id = rec.id
        run.status = f"{rec.kind} is {rec.state.value} (fault {rec.id[:8]})."
        run.log.append(f"{step.title}: {run.status}")

    async def _revert(self, run: GameRun, ctx: AppContext) -> None:
        if run.fault_id is None:
            return
        rec = ctx.engine.get(run.fault_id)
        if not rec.state.finished:
            await ctx.engine.abort(run.fault_id)
