"""Host and Origin checks: no DNS rebinding and no cross-site requests from a web page
to a dbchaos server on loopback.

* every request must name, in ``Host``, an address the server serves;
* every POST, PUT, PATCH and DELETE that carries an ``Origin`` must come from such an
  address too (whether or not the route exists).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def allowed_hosts_for(host: str, port: int) -> frozenset[str]:
    """The ``Host`` values a server bound to ``host:port`` answers to: that address, and for
    a wildcard bind every address and name of this machine."""
    names: set[str] = set()
    wildcard = host in ("0.0.0.0", "::")  # noqa: S104 - we list names, not bind
    if _is_loopback(host) or wildcard:
        names.update(_LOOPBACK_NAMES)
    if wildcard:
        names.update(_machine_names())
    else:
        names.add(f"[{host}]" if ":" in host else host)
    return frozenset({f"{n}:{port}" for n in names} | ({n for n in names} if port == 80 else set()))


def _machine_names() -> set[str]:
    """This machine's host names and interface addresses (for a wildcard bind)."""
    import socket

    import psutil

    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET:
                names.add(a.address)
            elif a.family == socket.AF_INET6:
                names.add(f"[{a.address.split('%')[0]}]")
    return {n for n in names if n}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostOriginGuard:
    """ASGI middleware refusing foreign ``Host`` headers and foreign ``Origin``s."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").lower()
        if host not in self.allowed_hosts:
            await _refuse(
                send,
                "foreign_host",
                f"this server does not serve the host {host!r}; use one of: " + ", ".join(sorted(self.allowed_hosts)),
            )
            return
        origin = headers.get("origin")
        if scope["method"] in _STATE_CHANGING and origin is not None:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or (parts.netloc or "").lower() not in self.allowed_hosts:
                await _refuse(
                    send,
                    "foreign_origin",
                    f"state-changing requests from the origin {origin!r} are refused",
                )
                return
        await self.app(scope, receive, send)


async def _refuse(send: Send, code: str, detail: str) -> None:
    body = json.dumps({"detail": detail, "code": code, "field": None}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
