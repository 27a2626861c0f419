"""The throwaway PostgreSQL server used by the default setup, the lab and the tests."""

from dbchaos.embedded.binaries import PgBinaries, embedded_binaries, system_binaries
from dbchaos.embedded.server import EmbeddedPostgres
from dbchaos.embedded.state import default_state_root, remove_strays
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
