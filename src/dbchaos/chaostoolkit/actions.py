"""Chaos Toolkit actions: inject, extend and end dbchaos faults.

In an experiment::

    {"type": "action", "name": "lock-items",
     "provider": {"type": "python", "module": "dbchaos.chaostoolkit.actions", "func": "inject_fault",
                  "arguments": {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 60,
                                "labels": {"experiment": "items-lock"}},
                  "secrets": ["dbchaos"]}}

Later activities find the fault again by its labels (Chaos Toolkit does not pass one
activity's output to the next).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dbchaos.chaostoolkit._common import Configuration, Secrets, as_json, client, select

__all__ = ["abort_fault", "extend_fault", "inject_fault", "reset"]


def inject_fault(
    kind: str,
    params: dict[str, Any] | None = None,
    duration_s: float | None = None,
    target: str | None = None,
    labels: dict[str, str] | None = None,
    acquire_timeout_s: float | None = None,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> dict[str, Any]:
    """Inject a fault and wait until it is active; returns the fault (its ``id``, ``deadline``...).
    Fails the activity if it could not be acquired (the error names who was in the way)."""
    with client(configuration, secrets) as chaos:
        fault = chaos.inject(
            kind,
            params,
            duration_s=duration_s,
            target=target,
            labels=labels,
            acquire_timeout_s=acquire_timeout_s,
        )
    return as_json(fault)


def abort_fault(
    fault_id: str | None = None,
    labels: dict[str, str] | None = None,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> list[dict[str, Any]]:
    """Revert the fault ``fault_id``, or every unfinished fault carrying all of ``labels``;
    returns them as they ended. Ending nothing is fine (a rollback after the deadline)."""
    with client(configuration, secrets) as chaos:
        return [as_json(chaos.abort(f.id)) for f in select(chaos, fault_id, labels, unfinished_only=True)]


def extend_fault(
    fault_id: str | None = None,
    labels: Mapping[str, str] | None = None,
    duration_s: float | None = None,
    extend_by_s: float | None = None,
    configuration: Configuration = None,
    secrets: Secrets = None,
) -> list[dict[str, Any]]:
    """Give the fault (or every active fault carrying ``labels``) a new ``duration_s`` from its
    activation, or ``extend_by_s`` more seconds (negative: shorten)."""
    with client(configuration, secrets) as chaos:
        return [
            as_json(chaos.extend(f.id, duration_s, extend_by_s=extend_by_s))
            for f in select(chaos, fault_id, labels, unfinished_only=True)
            if f.state == "active"
        ]


def reset(configuration: Configuration = None, secrets: Secrets = None) -> list[dict[str, Any]]:
    """Revert every fault the server holds (needs an ``admin`` token when tokens are on)."""
    with client(configuration, secrets) as chaos:
        return [as_json(f) for f in chaos.reset()]
