"""What the actions and probes share: a client built from Chaos Toolkit's configuration
and secrets, and selecting faults by id or labels."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dbchaos.client import DEFAULT_TIMEOUT_S, DEFAULT_URL, DbChaosClient, Fault

#: what Chaos Toolkit passes as ``configuration`` and ``secrets``
Configuration = Mapping[str, Any] | None
Secrets = Mapping[str, Any] | None

UNFINISHED = ("pending", "active", "reverting")


def client(configuration: Configuration, secrets: Secrets) -> DbChaosClient:
    """``configuration["dbchaos_url"]`` and ``secrets["dbchaos_token"]``, falling back to
    ``$DBCHAOS_URL`` / ``$DBCHAOS_TOKEN``."""
    conf = dict(configuration or {})
    url = conf.get("dbchaos_url") or os.environ.get("DBCHAOS_URL") or DEFAULT_URL
    token = (secrets or {}).get("dbchaos_token") or os.environ.get("DBCHAOS_TOKEN") or None
    timeout = float(conf.get("dbchaos_timeout_s", DEFAULT_TIMEOUT_S))
    return DbChaosClient(str(url), str(token) if token else None, timeout=timeout)


def has_labels(fault: Fault, labels: Mapping[str, str] | None) -> bool:
    return all(fault.labels.get(k) == v for k, v in (labels or {}).items())


def select(
    chaos: DbChaosClient, fault_id: str | None, labels: Mapping[str, str] | None, *, unfinished_only: bool
) -> list[Fault]:
    """The fault ``fault_id``, or every fault carrying all of ``labels`` (newest first)."""
    if fault_id is not None:
        fault = chaos.get(fault_id)
        return [fault] if not unfinished_only or fault.state in UNFINISHED else []
    if not labels:
        raise ValueError("name the fault: give fault_id or labels (to end every fault, use the reset action)")
    found = [f for f in chaos.list() if has_labels(f, labels) and (not unfinished_only or f.state in UNFINISHED)]
    return sorted(found, key=lambda f: f.created_at, reverse=True)


def as_json(fault: Fault) -> dict[str, Any]:
    """A fault as Chaos Toolkit records it in the journal (plain JSON)."""
    return fault.model_dump(mode="json")
