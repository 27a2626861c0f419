"""The lab's own folder, its state file, and the removal of what a killed lab left behind.

Layout (next to the embedded PostgreSQL's instance folders, under the same state root)::

    <state root>/
      lab-<random>/        one running lab
        lab.json           owner pid + process start time, the demo's pid and port
        demo.log           the demo shop's output
      pg-<random>/         its embedded PostgreSQL (see dbchaos.embedded.state)

The demo shop runs with its working folder inside ``lab-<random>``, so every process of a
lab is found by :func:`dbchaos.embedded.processes.instance_processes` even when its pid was
never recorded. A lab whose owner is gone (killed with SIGKILL, power cut) is *stray*:
:func:`remove_stray_labs` ends its processes and removes its folder. The embedded
PostgreSQL removes its own strays when it starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from dbchaos.embedded.processes import instance_processes, terminate
from dbchaos.embedded.state import orphaned_folders

log = logging.getLogger(__name__)

LAB_PREFIX = "lab-"
STATE_FILE = "lab.json"
_START_TIME_TOLERANCE_S = 1.0


@dataclass(frozen=True)
class LabRecord:
    """The content of ``lab.json``."""

    owner_pid: int
    owner_start_time: float
    created_at: float
    port: int | None = None
    demo_pid: int | None = None
    demo_port: int | None = None

    def with_changes(self, **changes: Any) -> LabRecord:
        return LabRecord(**{**asdict(self), **changes})


def _start_time(pid: int) -> float:
    return psutil.Process(pid).create_time()


def create_lab_folder(state_root: Path, port: int | None = None) -> tuple[Path, LabRecord]:
    """A fresh ``lab-*`` folder under ``state_root`` with its state file written."""
    folder = Path(tempfile.mkdtemp(prefix=LAB_PREFIX, dir=state_root))
    record = LabRecord(os.getpid(), _start_time(os.getpid()), time.time(), port=port)
    write_record(folder, record)
    return folder, record


def write_record(folder: Path, record: LabRecord) -> None:
    """Write ``lab.json`` atomically (a reader sees the old or the new record)."""
    fd, tmp = tempfile.mkstemp(prefix=".lab-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(record), fh)
        os.replace(tmp, folder / STATE_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_record(folder: Path) -> LabRecord | None:
    try:
        raw = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        return LabRecord(
            owner_pid=int(raw["owner_pid"]),
            owner_start_time=float(raw["owner_start_time"]),
            created_at=float(raw.get("created_at", 0.0)),
            port=None if raw.get("port") is None else int(raw["port"]),
            demo_pid=None if raw.get("demo_pid") is None else int(raw["demo_pid"]),
            demo_port=None if raw.get("demo_port") is None else int(raw["demo_port"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def owner_alive(record: LabRecord) -> bool:
    """Whether the lab process that wrote ``record`` still runs (same pid, same start time)."""
    try:
        proc = psutil.Process(record.owner_pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # cannot tell: never touch what might be live
    return abs(started - record.owner_start_time) <= _START_TIME_TOLERANCE_S


def destroy_lab_folder(folder: Path) -> list[int]:
    """End every process working inside ``folder`` (the demo shop) and remove it.

    Returns the pids that survived SIGKILL (normally none)."""
    survivors = terminate(instance_processes(folder), first=signal.SIGTERM, grace=3.0)
    shutil.rmtree(folder, ignore_errors=True)
    return [p.pid for p in survivors]


def remove_stray_labs(state_root: Path) -> list[Path]:
    """Remove every ``lab-*`` folder under ``state_root`` whose owner process is gone.

    Never raises for one bad folder; folders of live labs are left alone."""
    removed: list[Path] = []
    for folder, _ in orphaned_folders(state_root, LAB_PREFIX, read_record, owner_alive, "stray labs"):
        try:
            left = destroy_lab_folder(folder)
        except (OSError, psutil.Error) as exc:
            log.warning("cannot remove the stray lab %s: %s", folder, exc)
            continue
        if left:
            log.warning("processes %s of the stray lab %s survived SIGKILL", left, folder)
        if folder.exists():
            log.warning("cannot remove the stray lab folder %s", folder)
            continue
        removed.append(folder)
    return removed
