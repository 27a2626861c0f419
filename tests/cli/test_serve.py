"""README command 1, end to end: ``dbchaos serve`` on the embedded default."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from dbchaos.embedded.processes import instance_processes
from tests.helpers import wait_for
from tests.server_proc import free_port


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A TMPDIR of our own (traversable by the server user when we are root)."""
    folder = Path(tempfile.mkdtemp(prefix="dbchaos-serve-test-"))
    folder.chmod(0o711)  # a folder this test just made, nothing that existed before
    try:
        yield folder
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def _instances(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("dbchaos-*/pg-*"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_on_the_embedded_default_then_stop_cleanly(private_tmp: Path, signum: int) -> None:
    port = free_port()
    log = private_tmp / "serve.log"
    env = dict(os.environ, TMPDIR=str(private_tmp), PYTHONUNBUFFERED="1", COLUMNS="200")
    env.pop("DBCHAOS_TARGET_DSN", None)
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dbchaos", "serve", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:

        def health() -> dict[str, object] | None:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).json()  # type: ignore[no-any-return]
            except httpx.HTTPError:
                return None

        body = wait_for(health, 30.0, 0.1, what="/v1/health on the embedded default")
        assert body is not None
        assert time.monotonic() - started < 30
        target = body["target"]
        assert isinstance(target, dict) and target["usable"] is True
        assert target["server_version_num"] >= 180000
        wait_for(lambda: "try:" in log.read_text(), 5.0, what="the banner")
        out_text = log.read_text()
        assert f"http://127.0.0.1:{port}" in out_text
        dsn = re.search(r"psql '([^']+)'", out_text)
        assert dsn is not None
        with psycopg.connect(dsn.group(1)) as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone() == (10000,)
            joined = conn.execute("SELECT count(*) FROM orders o JOIN users u ON u.id = o.user_id").fetchone()
            assert joined is not None and joined[0] > 0
        (instance,) = _instances(private_tmp)
        assert instance_processes(instance)

        proc.send_signal(signum)
        assert proc.wait(20) == 0, log.read_text()
        assert not instance.exists()
        assert instance_processes(instance) == []
        assert _instances(private_tmp) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkilled_serve_leaves_a_stray_the_next_start_removes(private_tmp: Path) -> None:
    from dbchaos.embedded.server import EmbeddedPostgres

    port = free_port()
    env = dict(os.environ, TMPDIR=str(private_tmp), PYTHONUNBUFFERED="1")
    env.pop("DBCHAOS_TARGET_DSN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dbchaos", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        wait_for(lambda: _serves(port), 30.0, 0.1, what="dbchaos to serve")
        (stray,) = _instances(private_tmp)
    finally:
        proc.kill()
        proc.wait()
    assert stray.exists()
    with EmbeddedPostgres(state_root=stray.parent) as fresh:
        assert not stray.exists()
        assert instance_processes(stray) == []
        assert fresh.root.exists()


def _serves(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
