"""Exit codes (DESIGN §3) and the one place errors become them."""

from __future__ import annotations

from dbchaos import errors

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
HALTED = 4


def code_for(exc: errors.DbChaosError) -> int:
    if isinstance(exc, errors.TargetUnavailable):
        return UNREACHABLE
    if isinstance(exc, errors.InvalidInput):
        return USAGE
    return FAILED
