"""Typed settings, read once at the edge (CLI or app factory) from ``DBCHAOS_*`` variables.

Nothing in dbchaos reads the environment anywhere else: the settings object is built
in the factory and passed to whatever needs it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from dbchaos.errors import InvalidInput

DEFAULT_PORT = 8080
#: set only by an explicit flag or the targets file, never by an environment variable
_NOT_FROM_ENV = frozenset({"allow_ad_hoc_targets", "allow_not_opted_in"})


@dataclass(frozen=True)
class Settings:
    """Server-wide settings. Durations are seconds."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    #: DSN of the default target; ``None`` means "start the embedded PostgreSQL".
    target_dsn: str | None = None
    target_name: str = "default"
    default_duration_s: float = 60.0
    max_duration_s: float = 3600.0
    default_acquire_timeout_s: float = 5.0
    max_faults_per_target: int = 100
    #: Seconds PostgreSQL waits past a fault's deadline before it ends the session itself.
    server_side_grace_s: float = 2.0
    connect_timeout_s: float = 3.0
    log_level: str = "info"
    #: the application's alembic.ini, for the revision graph of the default target
    alembic_ini: str | None = None
    #: the targets file (TOML: named targets, their policies; see docs/targets.md)
    targets_file: str | None = None
    #: from the targets file only: the compat ``target_database_url`` may name other databases
    allow_ad_hoc_targets: bool = False
    #: DANGEROUS, from ``--dangerously-skip-opt-in`` only: inject into databases that never opted in
    allow_not_opted_in: bool = False
    #: TOML file of bearer tokens (hashes); ``None``: no auth, loopback only (docs/security.md)
    tokens_file: str | None = None
    #: append-only JSON-lines audit trail; ``None``: the last events in memory only (docs/audit.md)
    audit_log: str | None = None
    #: server-wide halt rules (docs/guard-rails.md), for every target that sets none of its own;
    #: ``None``: off. Over the limit, every fault on the target is reverted (end reason ``halted``).
    halt_max_blocked_sessions: int | None = None
    halt_max_blocked_for_s: float | None = None
    halt_max_fault_age_s: float | None = None
    halt_max_connections_used_pct: float | None = None
    #: URLs that get every event as a JSON POST (docs/events.md); env: space-separated
    webhooks: tuple[str, ...] = ()

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given non-``None`` fields replaced (for CLI flags)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``DBCHAOS_<FIELD>`` variables (upper-case field names)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in _NOT_FROM_ENV:
                continue
            raw = env.get(f"DBCHAOS_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, f.type, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise InvalidInput(f"port must be between 1 and 65535, not {self.port}", field="port")
        if self.max_duration_s <= 0:
            raise InvalidInput("max_duration_s must be positive", field="max_duration_s")
        if not 0 < self.default_duration_s <= self.max_duration_s:
            raise InvalidInput(
                "default_duration_s must be positive and at most max_duration_s",
                field="default_duration_s",
            )
        if self.max_faults_per_target < 1:
            raise InvalidInput("max_faults_per_target must be at least 1", field="max_faults_per_target")
        if self.halt_max_blocked_sessions is not None and self.halt_max_blocked_sessions < 0:
            raise InvalidInput("halt_max_blocked_sessions must be 0 or more", field="halt_max_blocked_sessions")
        for name in ("halt_max_blocked_for_s", "halt_max_fault_age_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise InvalidInput(f"{name} must be a positive number of seconds", field=name)
        pct = self.halt_max_connections_used_pct
        if pct is not None and not (math.isfinite(pct) and 0 < pct <= 100):
            raise InvalidInput(
                "halt_max_connections_used_pct must be a percentage above 0 and at most 100",
                field="halt_max_connections_used_pct",
            )


def _convert(name: str, type_name: Any, raw: str) -> Any:
    kind = str(type_name)
    if kind.startswith("tuple"):
        return tuple(raw.split())
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError as exc:
        raise InvalidInput(f"DBCHAOS_{name.upper()} must be a number, not {raw!r}", field=name) from exc
    return raw
