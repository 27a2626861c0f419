"""dbchaos: bounded, observable, reversible PostgreSQL faults."""

from dbchaos.errors import (
    CapacityReached,
    Conflict,
    DbChaosError,
    EmbeddedPostgresError,
    Forbidden,
    InvalidInput,
    LockNotAcquired,
    NotFound,
    TargetUnavailable,
    TargetUnreachable,
    TargetUnusable,
    Unauthorized,
)

__version__ = "0.1.0"

__all__ = [
    "CapacityReached",
    "Conflict",
    "DbChaosError",
    "EmbeddedPostgresError",
    "Forbidden",
    "InvalidInput",
    "LockNotAcquired",
    "NotFound",
    "TargetUnavailable",
    "TargetUnreachable",
    "TargetUnusable",
    "Unauthorized",
    "__version__",
]
