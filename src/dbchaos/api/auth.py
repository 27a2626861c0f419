"""Bearer tokens with scopes: the tokens file, the token store and the ASGI middleware.

Tokens file (TOML), one ``[[token]]`` table per token; only a SHA-256 hash of each secret
is stored (``dbchaos token create`` prints a fresh secret and its entry)::

    [[token]]
    name = "ci"            # who: shown in the audit trail as the request's principal
    scope = "inject"       # read < inject < admin
    sha256 = "<64 hex>"    # hashlib.sha256(secret.encode()).hexdigest()
    created = "2025-01-31T12:00:00Z"   # optional, informational

Rules (see ``docs/security.md``):

* no tokens configured: no auth; the server then listens on loopback only
  (:func:`require_tokens_off_loopback`);
* tokens configured: every request but ``GET``/``HEAD /v1/health`` needs
  ``Authorization: Bearer <secret>``; ``GET``/``HEAD``/``OPTIONS`` need ``read``, every
  other method ``inject``, ``POST /v1/reset`` ``admin``. The scope is decided from the
  method and path *before* routing, so an unknown route without a valid token is a 401
  too (nobody learns which routes exist without a token).
* 401 (with ``WWW-Authenticate: Bearer``): no token, a malformed header, an unknown token;
  403 ``insufficient_scope``: a valid token whose scope is too low.

The authenticated :class:`Principal` (or ``None``) is put in ``request.state.principal``.
No token and no ``Authorization`` header is ever logged.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from dbchaos.errors import InvalidInput

_log = logging.getLogger("dbchaos.api.auth")

SECRET_PREFIX = "dbc_"  # noqa: S105 - a prefix, not a secret
#: Longer Authorization values are refused without hashing them.
MAX_SECRET_LENGTH = 512
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ENTRY_KEYS = frozenset({"name", "scope", "sha256", "created"})
_REQUIRED_KEYS = ("name", "scope", "sha256")
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PUBLIC_PATHS = frozenset({"/v1/health"})
ADMIN_ROUTES = frozenset({("POST", "/v1/reset")})
TOKENS_FIELD = "tokens_file"


class TokenScope(enum.Enum):
    """What a token may do; each scope includes the ones before it."""

    READ = "read"
    INJECT = "inject"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def allows(self, required: TokenScope) -> bool:
        return self.rank >= required.rank

    @classmethod
    def parse(cls, value: object) -> TokenScope:
        for scope in cls:
            if value == scope.value:
                return scope
        raise ValueError(f"scope must be one of {', '.join(s.value for s in cls)}, not {value!r}")


_RANKS = {TokenScope.READ: 1, TokenScope.INJECT: 2, TokenScope.ADMIN: 3}


@dataclass(frozen=True)
class Principal:
    """Who made a request: the token's name and scope (never the secret)."""

    name: str
    scope: TokenScope


@dataclass(frozen=True)
class TokenEntry:
    name: str
    scope: TokenScope
    digest: bytes

    @property
    def principal(self) -> Principal:
        return Principal(self.name, self.scope)


@dataclass(frozen=True)
class NewToken:
    """A freshly generated token: the secret (shown once) and its tokens-file entry."""

    name: str
    scope: TokenScope
    secret: str
    sha256: str

    def entry_toml(self, created: str | None = None) -> str:
        lines = ["[[token]]", f'name = "{self.name}"', f'scope = "{self.scope.value}"', f'sha256 = "{self.sha256}"']
        if created is not None:
            lines.append(f'created = "{created}"')
        return "\n".join(lines) + "\n"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"name {name!r} must be 1-64 characters: letters, digits, '.', '_', '@', '-' "
            "(starting with a letter or digit)"
        )
    return name


def generate_token(scope: TokenScope, name: str | None = None) -> NewToken:
    """A new high-entropy secret (``dbc_`` + 256 random bits) with its hash."""
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    digest = hash_secret(secret)
    chosen = check_name(name) if name is not None else f"{scope.value}-{digest[:8]}"
    return NewToken(chosen, scope, secret, digest)


@dataclass(frozen=True)
class TokenStore:
    """The configured tokens (hashes only). Empty: auth is off."""

    entries: tuple[TokenEntry, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.entries)

    def authenticate(self, secret: str) -> Principal | None:
        """The principal whose hash matches ``secret``, or ``None``.

        Compares against every stored hash with :func:`hmac.compare_digest` and no early exit,
        so the time taken does not depend on which entry (if any) matched.
        """
        if len(secret) > MAX_SECRET_LENGTH:
            return None
        candidate = hashlib.sha256(secret.encode("utf-8")).digest()
        found: TokenEntry | None = None
        for entry in self.entries:
            if hmac.compare_digest(candidate, entry.digest) and found is None:
                found = entry
        return found.principal if found is not None else None

    @classmethod
    def load(cls, path: str | Path | None) -> TokenStore:
        """Read a tokens file; ``None`` means no tokens. Any problem is an ``InvalidInput``."""
        if path is None:
            return cls()
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(
                f"cannot read the tokens file {p}: {exc.strerror or exc}",
                code="invalid_tokens_file",
                field=TOKENS_FIELD,
            ) from None
        except UnicodeDecodeError:
            raise InvalidInput(
                f"the tokens file {p} is not UTF-8 text", code="invalid_tokens_file", field=TOKENS_FIELD
            ) from None
        return cls.parse(text, str(p))

    @classmethod
    def parse(cls, text: str, source: str = "<tokens file>") -> TokenStore:
        def bad(message: str) -> InvalidInput:
            return InvalidInput(f"{source}: {message}", code="invalid_tokens_file", field=TOKENS_FIELD)

        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise bad(f"not valid TOML: {exc}") from None
        unknown = sorted(set(doc) - {"token"})
        if unknown:
            raise bad(f"unknown top-level key(s) {', '.join(map(repr, unknown))}; tokens are [[token]] tables")
        raw = doc.get("token", [])
        if not isinstance(raw, list):
            raise bad("'token' must be an array of tables: write each token as a [[token]] table")
        entries: list[TokenEntry] = []
        for index, item in enumerate(raw, start=1):
            entries.append(_parse_entry(item, index, bad))
        names = [e.name for e in entries]
        for name in names:
            if names.count(name) > 1:
                raise bad(f"the token name {name!r} is used more than once; names identify requests in the audit trail")
        digests = [e.digest for e in entries]
        for i, entry in enumerate(entries):
            if entry.digest in digests[:i]:
                raise bad(f"[[token]] #{i + 1} ({entry.name!r}) has the same sha256 as an earlier token")
        return cls(tuple(entries))


def _parse_entry(item: Any, index: int, bad: Callable[[str], InvalidInput]) -> TokenEntry:
    where = f"[[token]] #{index}"
    if not isinstance(item, dict):
        raise bad(f"{where} must be a table")
    if isinstance(item.get("name"), str):
        where += f" ({item['name']!r})"
    unknown = sorted(set(item) - _ENTRY_KEYS)
    if unknown:
        raise bad(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: name, scope, sha256, created")
    for key in _REQUIRED_KEYS:
        if key not in item:
            raise bad(f"{where}: missing {key!r}")
        if not isinstance(item[key], str):
            raise bad(f"{where}: {key!r} must be a string")
    try:
        name = check_name(item["name"])
        scope = TokenScope.parse(item["scope"])
    except ValueError as exc:
        raise bad(f"{where}: {exc}") from None
    digest = item["sha256"].strip().lower()
    if not _HEX64.fullmatch(digest):
        raise bad(
            f"{where}: 'sha256' must be the 64 hex digits of the secret's SHA-256 hash, "
            "as 'dbchaos token create' prints"
        )
    return TokenEntry(name, scope, bytes.fromhex(digest))


def is_loopback_host(host: str) -> bool:
    """Is ``host`` (a listen address) reachable only from this machine?"""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_tokens_off_loopback(host: str, store: TokenStore) -> None:
    """Refuse to serve a non-loopback address without tokens (DESIGN §3)."""
    if store or is_loopback_host(host):
        return
    raise InvalidInput(
        f"refusing to listen on {host} without tokens: anyone who can reach that address could inject faults. "
        "Create a token with 'dbchaos token create --scope admin', put the printed [[token]] entry in a tokens "
        "file and pass it with --tokens-file PATH (or DBCHAOS_TOKENS_FILE), or listen on 127.0.0.1",
        code="tokens_required",
        field="host",
    )


def required_scope(method: str, path: str) -> TokenScope | None:
    """The scope a request needs, decided before routing; ``None``: public."""
    method = method.upper()
    normalized = path.rstrip("/") or "/"
    if method in ("GET", "HEAD") and normalized in PUBLIC_PATHS:
        return None
    if method in _READ_METHODS:
        return TokenScope.READ
    if (method, normalized) in ADMIN_ROUTES:
        return TokenScope.ADMIN
    return TokenScope.INJECT


def bearer_secret(value: str | None) -> str | None:
    """The secret of an ``Authorization: Bearer <secret>`` value; ``None`` if malformed."""
    if value is None:
        return None
    scheme, _, rest = value.strip().partition(" ")
    secret = rest.strip()
    if scheme.lower() != "bearer" or not secret or " " in secret:
        return None
    return secret


class BearerAuth:
    """ASGI middleware enforcing the token rules above (a no-op when no tokens are configured)."""

    def __init__(self, app: ASGIApp, store: TokenStore) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        state["principal"] = None
        if not self.store:
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET") if scope["type"] == "http" else "GET"
        path: str = scope.get("path", "/")
        required = required_scope(method, path)
        if required is None:
            await self.app(scope, receive, send)
            return
        header = _header(scope["headers"], b"authorization")
        secret = bearer_secret(header)
        principal = self.store.authenticate(secret) if secret is not None else None
        if principal is None:
            reason = "missing" if header is None else "malformed" if secret is None else "unknown"
            _log.info("refused %s %s from %s: %s bearer token", method, path, _client(scope), reason)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            if header is None:
                detail = "this server requires a token: send the header 'Authorization: Bearer <token>'"
                challenge = 'Bearer realm="dbchaos"'
            elif secret is None:
                detail = "the Authorization header must be 'Bearer <token>'"
                challenge = 'Bearer realm="dbchaos", error="invalid_request"'
            else:
                detail = "the bearer token is not valid (unknown, mistyped or revoked)"
                challenge = 'Bearer realm="dbchaos", error="invalid_token"'
            await _answer(send, 401, detail, "unauthorized", [(b"www-authenticate", challenge.encode())])
            return
        if not principal.scope.allows(required):
            _log.info(
                "refused %s %s from %s: token %r has scope %s, needs %s",
                method,
                path,
                _client(scope),
                principal.name,
                principal.scope.value,
                required.value,
            )
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            challenge = f'Bearer realm="dbchaos", error="insufficient_scope", scope="{required.value}"'
            await _answer(
                send,
                403,
                f"{method} {path} needs a token with scope {required.value!r}; "
                f"the token {principal.name!r} has scope {principal.scope.value!r}",
                "insufficient_scope",
                [(b"www-authenticate", challenge.encode())],
                required_scope=required.value,
            )
            return
        state["principal"] = principal
        await self.app(scope, receive, send)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "?"


async def _answer(
    send: Send, status: int, detail: str, code: str, headers: list[tuple[bytes, bytes]], **extra: Any
) -> None:
    body = json.dumps({"detail": detail, "code": code, "field": None, **extra}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
