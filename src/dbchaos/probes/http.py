"""``HttpProbe``: requests to the service under test, as its users would send them.

Each request carries ``X-Request-Id: <request id>`` (an app may log or store it, so a
request that timed out here but completed there can be matched later). ``timeout_s`` bounds
the whole request (connect, send, wait, read), like a user's patience or a gateway's
timeout; a request that runs out of it is ``timed_out`` with no status.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from dbchaos.errors import InvalidInput
from dbchaos.probes.base import Outcome, Probe, check_rate, short_error, short_text

REQUEST_ID_HEADER = "X-Request-Id"
#: header values shown as ``***`` in a run journal
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_NO_JSON = object()


@dataclass(frozen=True)
class HttpProbeConfig:
    """One HTTP probe. ``expect_status`` empty: any 2xx or 3xx answer counts as ok."""

    name: str
    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    #: a raw body, or ``json_body`` (any JSON value; sent with ``Content-Type: application/json``)
    body: str | bytes | None = None
    json_body: Any = _NO_JSON
    timeout_s: float = 5.0
    rate_hz: float = 1.0
    concurrency: int = 10
    expect_status: tuple[int, ...] = ()
    follow_redirects: bool = False
    verify_tls: bool = True

    def __post_init__(self) -> None:
        check_rate(self.rate_hz, self.concurrency, f"probe {self.name!r}")
        where = f"probe {self.name!r}"
        if self.method.upper() not in METHODS:
            raise InvalidInput(f"{where}: method must be one of {', '.join(sorted(METHODS))}", field="method")
        try:
            url = httpx.URL(self.url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise InvalidInput(f"{where}: url is not a URL ({exc})", field="url") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise InvalidInput(f"{where}: url must be an absolute http:// or https:// URL", field="url")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise InvalidInput(f"{where}: timeout must be positive", field="timeout")
        if self.body is not None and self.json_body is not _NO_JSON:
            raise InvalidInput(f"{where}: give body or json, not both", field="json")
        for s in self.expect_status:
            if not 100 <= s <= 599:
                raise InvalidInput(f"{where}: {s} is not an HTTP status code", field="expect_status")

    @property
    def has_json(self) -> bool:
        return self.json_body is not _NO_JSON

    def status_ok(self, status: int) -> bool:
        return status in self.expect_status if self.expect_status else 200 <= status < 400


class HttpProbe(Probe):
    kind = "http"

    def __init__(self, config: HttpProbeConfig) -> None:
        super().__init__(config.name, config.rate_hz, config.concurrency)
        self.config = config
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        if self._client is not None:
            return
        c = self.config
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(c.timeout_s),
            limits=httpx.Limits(max_connections=c.concurrency, max_keepalive_connections=c.concurrency),
            follow_redirects=c.follow_redirects,
            verify=c.verify_tls,
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def attempt(self, request_id: str) -> Outcome:
        c = self.config
        if self._client is None:
            await self.open()
        assert self._client is not None
        headers = {**c.headers, REQUEST_ID_HEADER: request_id}
        extra: dict[str, Any] = {"json": c.json_body} if c.has_json else {"content": c.body}
        try:
            async with asyncio.timeout(c.timeout_s):
                r = await self._client.request(c.method.upper(), c.url, headers=headers, **extra)
        except TimeoutError:
            return Outcome(
                False, error_class="Timeout", error=f"no complete answer within {c.timeout_s:g} s", timed_out=True
            )
        except httpx.TimeoutException as exc:
            return Outcome(False, error_class=type(exc).__name__, error=short_error(exc), timed_out=True)
        except httpx.HTTPError as exc:
            return Outcome(False, error_class=type(exc).__name__, error=short_error(exc))
        if c.status_ok(r.status_code):
            return Outcome(True, status=r.status_code)
        text = short_text(r.text) if r.content else ""
        return Outcome(
            False,
            status=r.status_code,
            error_class="UnexpectedStatus",
            error=f"HTTP {r.status_code}" + (f": {text}" if text else ""),
        )

    def describe(self) -> dict[str, Any]:
        c = self.config
        return super().describe() | {
            "method": c.method.upper(),
            "url": _masked_url(c.url),
            "headers": {k: ("***" if k.lower() in SECRET_HEADERS else v) for k, v in c.headers.items()},
            "timeout_s": c.timeout_s,
            "expect_status": list(c.expect_status) or "2xx/3xx",
        }


def _masked_url(url: str) -> str:
    u = httpx.URL(url)
    return str(u.copy_with(password="***")) if u.password else url  # noqa: S106 (a mask, not a password)
