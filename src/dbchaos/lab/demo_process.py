"""The demo shop as a child process of the lab: start, health, stop, restart.

The child works inside the lab's folder (so a later lab finds it even if this one was
killed, see :mod:`dbchaos.lab.state`), runs in a session of its own (a Ctrl-C in the
terminal reaches the lab, which stops everything in order), and on Linux asks the kernel
for SIGKILL when the thread that started it dies — which is why it is always started from
the main thread (the lab's event loop runs there).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from dbchaos.errors import TargetUnavailable
from dbchaos.lab.demo.config import Mode

HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 5.0


DEMO_UNAVAILABLE = "demo_unavailable"


def _demo_error(message: str) -> TargetUnavailable:
    """The demo shop would not start or answer (a 502 at the API's edge, exit 3 in the CLI)."""
    return TargetUnavailable(message, code=DEMO_UNAVAILABLE)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def parent_death_signal(signum: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to send ``signum`` to the child when the forking
    thread dies (Linux only; ``None`` elsewhere or off the main thread)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    arg = ctypes.c_ulong(signum)

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, arg)

    return set_pdeathsig


class DemoShop:
    """One demo shop process on a fixed port (kept across restarts)."""

    def __init__(
        self,
        dsn: str,
        folder: Path,
        *,
        mode: Mode = Mode.NAIVE,
        pool_timeout_s: float = 5.0,
        port: int | None = None,
        die_with_lab: bool = True,
    ) -> None:
        self.dsn = dsn
        self.folder = folder
        self.mode = mode
        self.pool_timeout_s = pool_timeout_s
        self.port = port or free_port()
        self.die_with_lab = die_with_lab
        self.log_file = folder / "demo.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dbchaos.lab.demo",
            "--dsn",
            self.dsn,
            "--port",
            str(self.port),
            "--mode",
            self.mode.value,
            "--pool-timeout",
            f"{self.pool_timeout_s:g}",
        ]

    def start(self) -> None:
        """Spawn the process (returns at once; see :meth:`wait_healthy`)."""
        if self.running:
            raise _demo_error("the demo shop is already running")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        preexec = parent_death_signal(signal.SIGKILL) if self.die_with_lab else None
        with open(self.log_file, "ab") as log:
            log.write(f"--- demo shop on port {self.port}, mode {self.mode.value}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    self.argv(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.folder,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                    preexec_fn=preexec,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise _demo_error(f"could not start the demo shop: {exc}") from exc
        self.started_at = time.time()

    async def wait_healthy(self, timeout_s: float = 20.0) -> None:
        """Poll ``/health`` until it answers 200; ``TargetUnavailable`` if the process exits or
        the time runs out (with the end of its log)."""
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                proc = self._proc
                if proc is None or proc.poll() is not None:
                    code = None if proc is None else proc.returncode
                    raise _demo_error(f"the demo shop exited during start-up ({code}):\n{self.log_tail()}")
                try:
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise _demo_error(f"the demo shop did not answer within {timeout_s:g} s:\n{self.log_tail()}")
                await asyncio.sleep(0.1)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` (requests stuck on a lock would keep a
        graceful shutdown waiting); idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._proc = None

    async def stop_async(self, grace_s: float = STOP_GRACE_S) -> None:
        """:meth:`stop` without blocking the event loop while the process winds down."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                while proc.poll() is None:
                    await asyncio.sleep(0.02)
        self._proc = None

    async def restart_async(self, timeout_s: float = 20.0) -> None:
        """Stop and start again on the same port, in the current mode (a "rollout").

        Must run on the main thread (the lab's event loop), so the new process gets its
        parent-death signal tied to a thread that lives as long as the lab."""
        await self.stop_async()
        self.start()
        self.restarts += 1
        await self.wait_healthy(timeout_s)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        kept = [line for line in text.splitlines() if line.strip()][-lines:]
        return "\n".join(kept) if kept else "(empty log)"
