"""Run the demo's real Alembic commands (the lab's "deploy"), capturing what a team would see."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dbchaos.faults.migration.graph import RevisionGraph

ALEMBIC_INI = Path(__file__).with_name("alembic.ini")


@dataclass(frozen=True)
class AlembicRun:
    """One ``alembic`` command: its arguments, exit code and combined output."""

    args: tuple[str, ...]
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_alembic(dsn: str, *args: str, timeout_s: float = 120.0) -> AlembicRun:
    """``alembic -c <demo ini> ARGS`` in a child process (as a deploy pipeline runs it)."""
    env = dict(os.environ, SHOP_DSN=dsn)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "alembic", "-c", str(ALEMBIC_INI), *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            cwd=ALEMBIC_INI.parent,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return AlembicRun(tuple(args), 124, f"{out}\n(alembic did not finish within {timeout_s:g} s)")
    return AlembicRun(tuple(args), proc.returncode, (proc.stdout + proc.stderr).strip())


def upgrade_head(dsn: str, timeout_s: float = 120.0) -> AlembicRun:
    return run_alembic(dsn, "upgrade", "head", timeout_s=timeout_s)


def revision_graph() -> RevisionGraph:
    """The demo's revision graph, as dbchaos's migration faults read it."""
    return RevisionGraph.from_alembic_ini(ALEMBIC_INI)
