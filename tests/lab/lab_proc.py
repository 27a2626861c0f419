"""Run ``dbchaos lab`` as a real process, in a private TMPDIR (its state root lives there)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.helpers import wait_for
from tests.server_proc import free_port

DASHBOARD = re.compile(r"^dashboard: (http://127\.0\.0\.1:\d+/lab/)$", re.MULTILINE)


@contextmanager
def private_tmp() -> Iterator[Path]:
    """A TMPDIR of our own, traversable by the server user when we are root (tmp_path is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="dbchaos-lab-test-"))
    folder.chmod(0o711)  # a folder we just made
    try:
        yield folder
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


@dataclass
class LabProcess:
    proc: subprocess.Popen[bytes]
    port: int
    tmp: Path
    stdout: Path
    stderr: Path
    started: float
    dashboard: str = ""
    ready_after_s: float = 0.0

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        out = self.stdout.read_text(errors="replace")
        err = self.stderr.read_text(errors="replace")
        return f"--- stdout\n{out}\n--- stderr\n{err}"

    def get(self, path: str, timeout: float = 10.0) -> Any:
        res = httpx.get(self.api + path, timeout=timeout)
        assert res.status_code == 200, (path, res.status_code, res.text)
        return res.json()

    def send(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> httpx.Response:
        return httpx.request(method, self.api + path, json=body, timeout=timeout)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def folders(self) -> list[Path]:
        return sorted([*self.tmp.glob("dbchaos-*/lab-*"), *self.tmp.glob("dbchaos-*/pg-*")])


def lab_folders(tmp: Path) -> list[Path]:
    return sorted([*tmp.glob("dbchaos-*/lab-*"), *tmp.glob("dbchaos-*/pg-*")])


def port_in_use(port: int) -> bool:
    """Someone listens on ``port`` (connections in TIME_WAIT do not count: a new server binds)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


@contextmanager
def dbchaos_lab(tmp: Path, *args: str, ready_timeout: float = 60.0) -> Iterator[LabProcess]:
    """``dbchaos lab --port <free> ARGS`` until it prints its ``dashboard:`` line; killed
    (SIGKILL) afterwards if the test left it running."""
    port = free_port()
    env = dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1", COLUMNS="200")
    env.pop("DBCHAOS_TARGET_DSN", None)
    out, err = tmp / f"lab-{port}.out", tmp / f"lab-{port}.err"
    started = time.monotonic()
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dbchaos", "lab", "--port", str(port), *args], stdout=o, stderr=e, env=env
        )
    lab = LabProcess(proc, port, tmp, out, err, started)

    def ready() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"dbchaos lab exited early ({proc.returncode}):\n{lab.output()}")
        found = DASHBOARD.search(out.read_text(errors="replace"))
        return found.group(1) if found else None

    try:
        found = wait_for(ready, ready_timeout, 0.05, what="the dashboard line")
        assert found is not None
        lab.dashboard = found
        lab.ready_after_s = time.monotonic() - started
        yield lab
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)
