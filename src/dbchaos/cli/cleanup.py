"""``dbchaos cleanup``: end the sessions a dead dbchaos instance left on a target, then
recover its journal.

A killed dbchaos leaves nothing for long: every session bounds itself on the server side
(DESIGN §2). But "not for long" can be minutes, a frozen process or a cut network keeps its
sessions until their timeouts, and an operator mid-incident wants them gone *now*. This
command ends exactly the ``dbchaos:%`` sessions whose instance no longer holds its owner
lock (see :mod:`dbchaos.engine.ownership`); a running instance's sessions are never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Annotated, Any

import psycopg
import typer

from dbchaos import errors
from dbchaos.api.schemas import fault_view
from dbchaos.cli import exits
from dbchaos.cli.common import emit_json, fail_with, stdout, target_or_name
from dbchaos.engine.engine import Engine
from dbchaos.engine.model import FaultRecord, State
from dbchaos.engine.ownership import Census, TargetSession, census
from dbchaos.engine.pgerrors import translate
from dbchaos.faults.migration import journal
from dbchaos.faults.registry import default_registry
from dbchaos.settings import Settings
from dbchaos.targets import Target, check_target

#: how long PostgreSQL may take to end one session before we report it as still there
TERMINATE_WAIT_MS = 5000


@dataclass
class CleanupResult:
    target: Target
    dry_run: bool
    #: orphaned sessions ended (or, with ``dry_run``, that would be)
    ended: list[TargetSession] = field(default_factory=list)
    #: orphaned sessions that could not be ended: (session, why)
    failed: list[tuple[TargetSession, str]] = field(default_factory=list)
    #: sessions left alone: a live instance's, or naming no instance
    kept: list[TargetSession] = field(default_factory=list)
    #: journal entries recovered (after the sessions were ended)
    recovered: list[FaultRecord] = field(default_factory=list)
    #: with ``dry_run``: unreverted journal entries whose owner is gone (fault id, kind, owner)
    to_recover: list[tuple[str, str, str]] = field(default_factory=list)
    recovery_error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            not self.failed and self.recovery_error is None and not any(r.state is State.FAILED for r in self.recovered)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.name,
            "dsn": self.target.masked_dsn,
            "dry_run": self.dry_run,
            "ended": [s.as_dict() for s in self.ended],
            "failed": [s.as_dict() | {"error": why} for s, why in self.failed],
            "kept": [s.as_dict() for s in self.kept],
            "recovered": [fault_view(r) for r in self.recovered],
            "to_recover": [{"fault_id": f, "kind": k, "owner": o} for f, k, o in self.to_recover],
            "recovery_error": self.recovery_error,
        }


def cleanup(
    target: Annotated[
        str | None,
        typer.Option(help="DSN of the database (or a target name of --targets-file).  [default: $DBCHAOS_TARGET_DSN]"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only list what would be ended and recovered; change nothing.")
    ] = False,
    targets_file: Annotated[
        str | None, typer.Option(help="Targets file whose target --target names.  Env: DBCHAOS_TARGETS_FILE.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """End the dbchaos sessions (application_name 'dbchaos:...') whose dbchaos instance is gone,
    then revert that instance's journal entries (as 'dbchaos recover' does).

    An instance is gone when no session holds its owner lock on the database. Sessions of a
    running instance, and sessions that name no instance, are never ended. Exit codes: 0 done
    (or nothing to do), 1 a session could not be ended or a revert failed, 2 usage, 3 unreachable."""
    try:
        settings = Settings.from_env().with_overrides(targets_file=targets_file)
        tgt = target_or_name(target, settings)
        result = asyncio.run(run_cleanup(tgt, settings, dry_run=dry_run))
    except errors.DbChaosError as exc:
        fail_with(exc, as_json=as_json)
    if as_json:
        emit_json(result.as_dict())
    else:
        _print(result)
    if not result.ok:
        raise typer.Exit(exits.FAILED)


async def run_cleanup(target: Target, settings: Settings, *, dry_run: bool = False) -> CleanupResult:
    """End the orphaned ``dbchaos:%`` sessions on ``target`` and recover its journal (see the module)."""
    check = await check_target(target, connect_timeout_s=settings.connect_timeout_s)
    check.raise_if_unusable()  # e.g. through a transaction pooler an owner lock taken here would leak
    result = CleanupResult(target, dry_run)
    conn = await target.connect("dbchaos:cleanup", connect_timeout_s=settings.connect_timeout_s)
    try:
        await conn.execute("SET statement_timeout = '30s'; SET lock_timeout = '5s'")
        found = await census(conn)
        result.kept = [s for s in found.sessions if not s.orphan]
        orphans = [s for s in found.sessions if s.orphan]
        if dry_run:
            result.ended = orphans
            result.to_recover = await _unowned_entries(conn, found)
            return result
        by_instance: dict[str, list[TargetSession]] = {}
        for s in orphans:
            assert s.instance is not None
            by_instance.setdefault(s.instance, []).append(s)
        for instance, sessions in by_instance.items():
            await _end_instance(conn, instance, sessions, result)
    except psycopg.Error as exc:
        raise translate(exc, "dbchaos cleanup") from exc
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
    engine = Engine(settings, {target.name: target}, default_registry())
    try:
        result.recovered = await engine.recover()
    except errors.DbChaosError as exc:
        result.recovery_error = exc.message
    finally:
        await engine.close()
    return result


async def _end_instance(
    conn: psycopg.AsyncConnection[Any], instance: str, sessions: list[TargetSession], result: CleanupResult
) -> None:
    """End ``sessions`` of a gone ``instance`` while holding its owner lock, as recovery does:
    an instance that comes back meanwhile finds its lock taken, and we find it held."""
    key = journal.owner_key(instance)
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (journal.OWNER_LOCK_CLASS, key))
    row = await cur.fetchone()
    if not (row and row[0]):  # it is alive after all (its control session reconnected)
        result.kept.extend(sessions)
        return
    try:
        for s in sessions:
            why = await _terminate(conn, s.pid)
            if why is None:
                result.ended.append(s)
            else:
                result.failed.append((s, why))
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (journal.OWNER_LOCK_CLASS, key))


async def _terminate(conn: psycopg.AsyncConnection[Any], pid: int) -> str | None:
    """End one backend and wait for it to exit; ``None`` on success, else why not."""
    try:
        cur = await conn.execute("SELECT pg_terminate_backend(%s, %s)", (pid, TERMINATE_WAIT_MS))
        row = await cur.fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return (
            "permission denied: the role dbchaos cleanup connects as must be a superuser, the session's own role, "
            "or a member of pg_signal_backend"
        )
    if row and row[0]:
        return None
    cur = await conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
    if await cur.fetchone() is None:
        return None  # it had ended by itself meanwhile
    return f"still there {TERMINATE_WAIT_MS / 1000:g} s after pg_terminate_backend"


async def _unowned_entries(conn: psycopg.AsyncConnection[Any], found: Census) -> list[tuple[str, str, str]]:
    return [(e.fault_id, e.kind, e.owner) for e in await journal.unreverted(conn) if not found.owner_alive(e.owner_key)]


def _print(result: CleanupResult) -> None:
    out = stdout()
    verb = "would end" if result.dry_run else "ended"
    out.print(f"target {result.target.name!r} ({result.target.masked_dsn}):")
    if not result.ended and not result.failed:
        out.print("no orphaned dbchaos sessions")
    else:
        out.print(f"{verb} {len(result.ended)} orphaned dbchaos session(s):")
    for s in result.ended:
        out.print(f"  pid {s.pid}  {s.application_name}  {s.role} of gone instance {s.instance}  {_age(s)}")
    for s, why in result.failed:
        out.print(f"  [red]could not end[/red] pid {s.pid}  {s.application_name}: {why}")
    live = sorted({s.instance for s in result.kept if s.owner == "live" and s.instance})
    unknown = [s for s in result.kept if s.owner != "live"]
    if live:
        n = sum(1 for s in result.kept if s.owner == "live")
        out.print(f"left alone: {n} session(s) of running instance(s) {', '.join(live)}")
    if unknown:
        out.print(
            f"left alone: {len(unknown)} dbchaos session(s) that name no instance "
            f"({', '.join(sorted({s.application_name for s in unknown}))}); end them by pid if you are sure"
        )
    if result.dry_run:
        if result.to_recover:
            out.print(f"then would recover {len(result.to_recover)} journal entr(y/ies) of gone instances:")
            for fid, kind, owner in result.to_recover:
                out.print(f"  {fid} ({kind}) of {owner}")
        else:
            out.print("journal: nothing to recover")
        return
    if result.recovery_error is not None:
        out.print(f"[red]journal recovery did not run:[/red] {result.recovery_error}; run 'dbchaos recover' later")
    elif not result.recovered:
        out.print("journal: nothing to recover")
    for r in result.recovered:
        out.print(f"recovered {r.id} ({r.kind}): {r.state.value}" + (f" — {r.error}" if r.error else ""))


def _age(s: TargetSession) -> str:
    parts = [s.state or "no state"]
    if s.xact_age_s is not None:
        parts.append(f"transaction open {s.xact_age_s:.1f}s")
    elif s.state_age_s is not None:
        parts.append(f"for {s.state_age_s:.1f}s")
    return ", ".join(parts)
