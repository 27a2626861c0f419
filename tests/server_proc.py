"""Run ``dbchaos serve`` as a real process for end-to-end and crash tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 15.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def dbchaos_server(args: list[str], tmp: Path, *, ready_timeout: float = 60.0) -> Iterator[ServerProcess]:
    """Start ``dbchaos serve ARGS`` on a free port; wait for /v1/health; kill it afterwards."""
    port = free_port()
    log = tmp / f"server-{port}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dbchaos", "serve", "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = ServerProcess(proc, port, log)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"dbchaos exited early ({proc.returncode}):\n{server.output()}")
        try:
            return httpx.get(f"{server.url}/v1/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, ready_timeout, 0.1, what="dbchaos to serve /v1/health")
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait(10)
