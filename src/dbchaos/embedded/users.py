"""Which operating-system user runs the server.

PostgreSQL refuses to run as root. Run as root, dbchaos runs it as a dedicated system
user (created on first use); run as anyone else, it runs it as that user.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dbchaos.errors import EmbeddedPostgresError

DEFAULT_SERVER_USER = "dbchaos-pg"


@dataclass(frozen=True)
class ServerUser:
    """Another user the server runs as (only when dbchaos runs as root)."""

    name: str
    uid: int
    gid: int


def resolve_server_user(run_as: str | None) -> ServerUser | None:
    """The user to switch to, or None to run the server as the current user."""
    euid = os.geteuid()
    if euid != 0:
        if run_as is None or run_as == _user_name(euid):
            return None
        raise EmbeddedPostgresError(f"Cannot run PostgreSQL as {run_as!r}: switching users needs root.")
    name = run_as or DEFAULT_SERVER_USER
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if name != DEFAULT_SERVER_USER:
            raise EmbeddedPostgresError(f"Cannot run PostgreSQL as {name!r}: no such user.") from None
        entry = _create_system_user(name)
    if entry.pw_uid == 0:
        raise EmbeddedPostgresError(f"Cannot run PostgreSQL as {name!r}: PostgreSQL refuses to run as root.")
    return ServerUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _create_system_user(name: str) -> pwd.struct_passwd:
    cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedPostgresError(f"Could not create the system user {name!r}: {exc}.") from exc
    try:
        # Look it up even on failure: another process may have created it meanwhile.
        return pwd.getpwnam(name)
    except KeyError:
        detail = (result.stderr or result.stdout).strip()
        raise EmbeddedPostgresError(
            f"Could not create the system user {name!r} (useradd exit code {result.returncode}): {detail}."
        ) from None


def first_untraversable(path: Path, user: ServerUser) -> Path | None:
    """The first folder on ``path``'s chain that ``user`` may not search, or None.

    Judged from the mode bits with the user's primary group only (the server runs without
    supplementary groups); ACLs are not consulted.
    """
    chain = [path, *path.parents]
    for folder in reversed(chain):
        st = os.stat(folder)
        if st.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif st.st_gid == user.gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return folder
    return None
