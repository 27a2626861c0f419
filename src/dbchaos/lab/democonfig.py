"""The demo shop's configuration, switched at run time through its ``/admin/config``
(the dashboard's Naive / Hardened switch and the game days use the same call)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from dbchaos import errors
from dbchaos.lab.demo.config import Mode
from dbchaos.lab.demo_process import DEMO_UNAVAILABLE

if TYPE_CHECKING:
    from dbchaos.lab.context import Lab

#: a naive shop whose threads all wait can take a while to run even this request
DEMO_ADMIN_TIMEOUT_S = 10.0


async def demo_admin(lab: Lab, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(timeout=DEMO_ADMIN_TIMEOUT_S) as client:
            res = await client.request(method, f"{lab.demo.url}/admin/config", json=body)
    except httpx.HTTPError as exc:
        raise errors.TargetUnavailable(
            f"the demo shop did not answer its admin endpoint: {type(exc).__name__}", code=DEMO_UNAVAILABLE
        ) from None
    if res.status_code != 200:
        raise errors.TargetUnavailable(
            f"the demo shop answered {res.status_code} to {method} /admin/config", code=DEMO_UNAVAILABLE
        )
    answer: dict[str, Any] = res.json()
    return answer


async def set_mode(lab: Lab, mode: Mode) -> dict[str, Any]:
    """Switch the running shop (no restart) and remember the mode for the next restart."""
    answer = await demo_admin(lab, "PUT", {"mode": mode.value, "pool_timeout_s": lab.demo.pool_timeout_s})
    lab.demo.mode = mode
    lab.event("config", f"the shop is now {mode.value}", mode=mode.value)
    return {"mode": mode.value, **answer}
