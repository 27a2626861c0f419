"""dbchaos: bounded, observable, reversible PostgreSQL faults."""

from typing import Any

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


def discover(discover_system: bool = True) -> dict[str, Any]:
    """For Chaos Toolkit's ``chaos discover dbchaos``: the extension's actions and probes
    (:mod:`dbchaos.chaostoolkit`; needs ``chaostoolkit-lib``)."""
    from dbchaos.chaostoolkit import discover as discover_activities

    return discover_activities(discover_system)


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
