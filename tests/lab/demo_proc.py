"""Run the lab's demo shop as a real process (for the demo's tests and the experiment tests)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers import wait_for
from tests.server_proc import free_port


@dataclass
class DemoProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def demo_shop(dsn: str, tmp: Path, *, mode: str = "naive", pool_timeout: float | None = None) -> Iterator[DemoProcess]:
    """``python -m dbchaos.lab.demo`` on a free port, against an already migrated ``dsn``."""
    port = free_port()
    log = tmp / f"demo-{port}.log"
    args = [sys.executable, "-m", "dbchaos.lab.demo", "--dsn", dsn, "--port", str(port), "--mode", mode]
    if pool_timeout is not None:
        args += ["--pool-timeout", str(pool_timeout)]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    demo = DemoProcess(proc, port, log)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the demo exited early ({proc.returncode}):\n{demo.output()}")
        try:
            return httpx.get(f"{demo.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 30, 0.1, what="the demo shop to answer /health")
        yield demo
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
