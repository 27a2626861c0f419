"""What the lab's routes share at run time: the shop database, the demo process, the
series, the watcher, the traffic generator and the lab's own event log."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from dbchaos import errors
from dbchaos.lab.dbwatch import DbWatch
from dbchaos.lab.demo_process import DemoShop
from dbchaos.lab.gamedays import GameDays
from dbchaos.lab.series import Series
from dbchaos.lab.shopdb import ShopDatabase
from dbchaos.lab.traffic import Traffic

#: lab events kept (deploys, restarts, mode switches, terminated sessions)
EVENTS_KEPT = 200


@dataclass
class Lab:
    shop: ShopDatabase
    demo: DemoShop
    series: Series
    watch: DbWatch
    traffic: Traffic | None = None
    #: the server's version, for the status line
    server_version: str | None = None
    #: how long a deploy's ``alembic upgrade head`` may run before it is killed
    deploy_timeout_s: float = 60.0
    deploy_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_deploy: dict[str, Any] | None = None
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    gamedays: GameDays = field(default_factory=GameDays)

    def event(self, kind: str, text: str, **extra: Any) -> dict[str, Any]:
        """Record something the lab did, for the charts' markers and the activity list."""
        entry = {"t": time.time(), "kind": kind, "text": text, **extra}
        self.events.append(entry)
        return entry


def get_lab(request: Request) -> Lab:
    """The running lab; 404 ``lab_not_running`` when the app serves the API without one
    (as the tests' in-process app does)."""
    lab = getattr(request.app.state, "lab", None)
    if not isinstance(lab, Lab):
        raise errors.NotFound("this server runs no lab (start one with 'dbchaos lab')", code="lab_not_running")
    return lab
