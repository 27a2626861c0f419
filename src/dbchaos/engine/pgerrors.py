"""Driver errors -> dbchaos errors, by SQLSTATE (never by message text)."""

from __future__ import annotations

import psycopg

from dbchaos import errors


def translate(exc: psycopg.Error, what: str) -> errors.DbChaosError:
    """The dbchaos error for a driver error raised while doing ``what``."""
    state = exc.sqlstate or ""
    text = (exc.diag.message_primary or str(exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__
    if state == "55P03":
        return errors.LockNotAcquired(f"{what}: the lock was not granted in time ({text})")
    if state == "57014":
        return errors.LockNotAcquired(f"{what}: the statement was cancelled ({text})")
    if state == "42501":
        return errors.Forbidden(f"{what}: the target role lacks a privilege ({text})", code="insufficient_privilege")
    if state == "53300":
        return errors.Conflict(f"{what}: the target has no free connection slots ({text})", code="too_many_connections")
    if state == "25006":
        return errors.TargetUnusable(f"{what}: the target is read-only ({text})")
    if state.startswith("08") or (isinstance(exc, psycopg.OperationalError) and not state):
        return errors.TargetUnreachable(f"{what}: the connection to the target failed ({text})")
    return errors.Conflict(f"{what}: PostgreSQL refused it [{state or 'no SQLSTATE'}] ({text})", code="database_error")
