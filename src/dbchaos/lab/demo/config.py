"""The demo service's two configurations."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Mode(StrEnum):
    NAIVE = "naive"
    HARDENED = "hardened"


@dataclass(frozen=True)
class DemoConfig:
    """How the demo talks to its database.

    ``pool_timeout_s`` is SQLAlchemy's wait for a free pooled connection: its default of 30 s in
    ``naive`` mode unless told otherwise (tests lower it to keep runs short).
    """

    dsn: str
    mode: Mode = Mode.NAIVE
    pool_timeout_s: float | None = None
    #: the hardened settings (ignored in naive mode)
    lock_timeout_ms: int = 500
    statement_timeout_ms: int = 2000
    idle_in_transaction_timeout_ms: int = 5000
    hardened_pool_timeout_s: float = 1.0

    @property
    def effective_pool_timeout_s(self) -> float:
        if self.mode is Mode.HARDENED:
            return self.hardened_pool_timeout_s
        return 30.0 if self.pool_timeout_s is None else self.pool_timeout_s

    def session_options(self) -> str:
        """The libpq ``options`` string that sets the hardened timeouts on every connection."""
        if self.mode is Mode.NAIVE:
            return ""
        return (
            f"-c lock_timeout={self.lock_timeout_ms}ms -c statement_timeout={self.statement_timeout_ms}ms "
            f"-c idle_in_transaction_session_timeout={self.idle_in_transaction_timeout_ms}ms"
        )

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"mode": self.mode.value, "pool_timeout_s": self.effective_pool_timeout_s}
        if self.mode is Mode.HARDENED:
            out |= {
                "lock_timeout_ms": self.lock_timeout_ms,
                "statement_timeout_ms": self.statement_timeout_ms,
                "idle_in_transaction_session_timeout_ms": self.idle_in_transaction_timeout_ms,
            }
        return out
