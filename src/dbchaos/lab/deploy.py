"""The lab's "deploy": the demo's real ``alembic upgrade head``, then a restart of the demo —
the two steps of most deploy pipelines, with what they printed.

Alembic runs in a child process (as a pipeline runs it) from a worker thread, with a
timeout, so the lab keeps serving while a migration hangs on a lock. The restart happens
only when the migration succeeded: a pipeline stops at a failed step.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from dbchaos import errors
from dbchaos.lab.context import Lab
from dbchaos.lab.demo.migrate import AlembicRun, run_alembic

#: the Alembic commands the dashboard may run besides the deploy (fixed argument lists)
COMMANDS: dict[str, tuple[str, ...]] = {
    "current": ("current",),
    "history": ("history",),
    "heads": ("heads",),
    "stamp": ("stamp", "--purge", "head"),
}
COMMAND_TIMEOUT_S = 20.0


def _run_view(run: AlembicRun, started: float) -> dict[str, Any]:
    return {
        "command": "alembic " + " ".join(run.args),
        "returncode": run.returncode,
        "ok": run.ok,
        "timed_out": run.returncode == 124,
        "output": run.output,
        "duration_s": round(time.monotonic() - started, 3),
    }


async def deploy(lab: Lab) -> dict[str, Any]:
    """Run ``alembic upgrade head``; on success restart the demo. 409 while one runs."""
    if lab.deploy_lock.locked():
        raise errors.Conflict("a deploy (or an alembic command) is already running", code="deploy_running")
    async with lab.deploy_lock:
        lab.event("deploy", "deploy started: alembic upgrade head")
        started = time.monotonic()
        run = await asyncio.to_thread(run_alembic, lab.shop.app_dsn, "upgrade", "head", timeout_s=lab.deploy_timeout_s)
        result = _run_view(run, started) | {"restarted": False, "restart_error": None}
        if run.ok:
            try:
                await lab.demo.restart_async()
                result["restarted"] = True
            except errors.DbChaosError as exc:
                result["restart_error"] = exc.message
        result["duration_s"] = round(time.monotonic() - started, 3)
        result["finished_at"] = time.time()
        if run.ok and result["restarted"]:
            text = "deploy finished: migrated and restarted"
        elif run.ok:
            text = "deploy: migrated, but the restart failed"
        elif result["timed_out"]:
            text = f"deploy killed after {lab.deploy_timeout_s:g} s: alembic never finished"
        else:
            text = f"deploy failed: alembic exited {run.returncode}; the app was not restarted"
        lab.event("deploy", text, ok=bool(run.ok and result["restarted"]))
        lab.last_deploy = result
        return result


async def alembic_command(lab: Lab, name: str) -> dict[str, Any]:
    """One of :data:`COMMANDS` (``stamp`` is ``alembic stamp --purge head``, the usual repair)."""
    args = COMMANDS.get(name)
    if args is None:
        raise errors.InvalidInput(
            f"unknown command {name!r}; one of: {', '.join(COMMANDS)}", code="unknown_command", field="command"
        )
    if lab.deploy_lock.locked():
        raise errors.Conflict("a deploy (or an alembic command) is already running", code="deploy_running")
    async with lab.deploy_lock:
        started = time.monotonic()
        run = await asyncio.to_thread(run_alembic, lab.shop.app_dsn, *args, timeout_s=COMMAND_TIMEOUT_S)
        result = _run_view(run, started)
        if name == "stamp":
            lab.event("alembic", f"alembic stamp --purge head: exit {run.returncode}", ok=run.ok)
        return result
