"""The one error hierarchy of dbchaos.

Every failure dbchaos reports is a :class:`DbChaosError`. Each carries a stable
snake_case ``code``, a one-sentence human message and, for input errors, the
``field`` (a dotted path) that caused it. The API layer maps the classes to HTTP
status codes and the CLI maps them to exit codes; nothing below those edges knows
about either.

::

    DbChaosError
    ├── InvalidInput            bad or unknown input (kind, mode, table, duration...)
    ├── NotFound                unknown fault id or other object
    ├── Conflict                the database or dbchaos is in a state that forbids it
    │   └── LockNotAcquired     a fault could not take its lock in time
    ├── CapacityReached         the per-target cap on concurrent faults is reached
    ├── Forbidden               not allowed (token scope, target not opted in...)
    ├── Unauthorized            no or bad token
    ├── TargetUnavailable       the target cannot be used
    │   ├── TargetUnreachable   cannot connect
    │   └── TargetUnusable      connected, but a fault cannot work there
    └── EmbeddedPostgresError   the throwaway PostgreSQL could not start or stop
"""

from __future__ import annotations

from typing import Any


class DbChaosError(Exception):
    """Base class: every error dbchaos raises on purpose."""

    code = "dbchaos_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field
        self.extra: dict[str, Any] = dict(extra or {})


class InvalidInput(DbChaosError):
    """The request names something that does not exist or is out of range."""

    code = "invalid_input"


class NotFound(DbChaosError):
    code = "not_found"


class Conflict(DbChaosError):
    code = "conflict"


class LockNotAcquired(Conflict):
    code = "lock_not_acquired"


class CapacityReached(DbChaosError):
    code = "capacity_reached"


class Forbidden(DbChaosError):
    code = "forbidden"


class Unauthorized(DbChaosError):
    code = "unauthorized"


class TargetUnavailable(DbChaosError):
    code = "target_unavailable"


class TargetUnreachable(TargetUnavailable):
    code = "target_unreachable"


class TargetUnusable(TargetUnavailable):
    code = "target_unusable"


class EmbeddedPostgresError(DbChaosError):
    code = "embedded_postgres_error"
