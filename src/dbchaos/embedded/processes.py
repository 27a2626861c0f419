"""Finding and ending the processes of one instance folder.

A process belongs to an instance when its working folder, its executable or one of its
arguments lies inside the instance folder. PostgreSQL's processes ``chdir`` into the data
folder, so this finds the postmaster and every backend, even after the postmaster died
and its children were re-parented (their command lines then read ``postgres: ...``).

Nothing here takes a lock or uses psutil's process cache, so it is safe to call from a
signal handler.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

import psutil


def _inside(text: str, root: str) -> bool:
    """True when ``text`` (a path, or an argument holding one) lies inside ``root``."""
    return (
        text == root
        or text.startswith(root + os.sep)
        or text.startswith(root + " (deleted)")
        or (root + os.sep) in text
        or text.endswith("=" + root)
    )


def belongs_to(proc: psutil.Process, root: Path) -> bool:
    """Whether ``proc`` runs inside the instance folder ``root``."""
    where = str(root)
    try:
        if _inside(proc.cwd(), where):
            return True
    except (psutil.Error, OSError):
        pass
    try:
        if _inside(proc.exe(), where):
            return True
    except (psutil.Error, OSError):
        pass
    try:
        return any(_inside(arg, where) for arg in proc.cmdline())
    except (psutil.Error, OSError):
        return False


def instance_processes(root: Path) -> list[psutil.Process]:
    """Every live process (not a zombie, not this one) that belongs to ``root``."""
    found: list[psutil.Process] = []
    me = os.getpid()
    for pid in psutil.pids():
        if pid == me:
            continue
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if belongs_to(proc, root):
            found.append(proc)
    return found


def verified_process(pid: int | None, root: Path) -> psutil.Process | None:
    """The process ``pid`` if it is alive and belongs to ``root`` (guards against reuse)."""
    if pid is None or pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return proc if belongs_to(proc, root) else None


def gone(proc: psutil.Process) -> bool:
    """True once ``proc`` has exited (a zombie counts as exited)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Poll until every process has exited or ``timeout`` passed; return the survivors."""
    pending = list(procs)
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        pending = [p for p in pending if not gone(p)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def send(proc: psutil.Process, signum: int) -> None:
    """Send a signal, ignoring a process that is already gone."""
    with contextlib.suppress(psutil.Error):
        proc.send_signal(signum)


def terminate(
    procs: Iterable[psutil.Process], *, first: int = signal.SIGQUIT, grace: float = 5.0
) -> list[psutil.Process]:
    """Send ``first``, wait ``grace`` seconds, then SIGKILL; return what still survives."""
    targets = list(procs)
    for proc in targets:
        send(proc, first)
    survivors = wait_gone(targets, grace)
    for proc in survivors:
        send(proc, signal.SIGKILL)
    return wait_gone(survivors, 5.0)
