"""Helpers shared by the compat routes (``/api/v1/break/...``): the interface of the
user's previous chaos server, served on top of the same engine.

Compat answers use Unix seconds (floats), the old state names derived from dbchaos's
state and end reason (table in ``reference/compat-api.md``), and "absent duration means
until stopped", which dbchaos bounds by the server's maximum duration.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
from typing import Any

from dbchaos import errors
from dbchaos.api.context import AppContext
from dbchaos.engine.engine import HISTORY_LIMIT
from dbchaos.engine.model import EndReason, FaultRecord, State
from dbchaos.settings import Settings
from dbchaos.targets import Target, parse_dsn

#: Compat ``duration_seconds`` bounds (the old server's).
MIN_DURATION_S = 1
MAX_DURATION_S = 3600


def unix(ts: float | None) -> float | None:
    """A dbchaos time (already Unix seconds) as a compat answer shows it."""
    return None if ts is None else round(ts, 3)


def elapsed(start: float | None, end: float | None, now: float | None = None) -> float | None:
    """Seconds from ``start`` to ``end`` (or to now while it runs)."""
    if start is None:
        return None
    stop = end if end is not None else (time.time() if now is None else now)
    return round(max(0.0, stop - start), 3)


def compat_duration(duration_seconds: int | float | None, settings: Settings) -> float:
    """The engine duration for a compat ``duration_seconds``, bounded by the server-wide maximum
    only (prefer :func:`target_compat_duration`, which knows the target's own maximum)."""
    if duration_seconds is None:
        return float(settings.max_duration_s)
    if duration_seconds > settings.max_duration_s:
        raise errors.InvalidInput(
            f"duration_seconds {duration_seconds:g} is over this server's maximum of {settings.max_duration_s:g} s",
            code="duration_too_long",
            field="duration_seconds",
            extra={"max_duration_s": settings.max_duration_s},
        )
    return float(duration_seconds)


def target_compat_duration(duration_seconds: int | float | None, ctx: AppContext, target: str | None = None) -> float:
    """The engine duration for a compat ``duration_seconds`` on ``target`` (a name; ``None``:
    the default): absent means "until stopped", which dbchaos bounds by the target's
    maximum duration (the server's, or the targets file's where lower)."""
    tgt = ctx.engine.target(target)
    limit = ctx.engine.max_duration_s(tgt)
    if duration_seconds is None:
        return float(limit)
    if duration_seconds > limit:
        whose = "this server's" if limit >= ctx.settings.max_duration_s else f"target {tgt.name!r}'s"
        raise errors.InvalidInput(
            f"duration_seconds {duration_seconds:g} is over {whose} maximum of {limit:g} s",
            code="duration_too_long",
            field="duration_seconds",
            extra={"max_duration_s": limit},
        )
    return float(duration_seconds)


def long_transaction_state(rec: FaultRecord) -> str:
    """``starting | running | completed | rolled_back | failed | force_killed``."""
    if rec.state is State.PENDING:
        return "starting"
    if rec.state in (State.ACTIVE, State.REVERTING):  # reverting: the lock is held until the rollback ends
        return "running"
    if rec.state is State.REVERTED:
        if rec.end_reason is EndReason.DEADLINE:
            return "completed"
        if rec.end_reason is EndReason.KILLED:
            return "force_killed"
        return "rolled_back"
    if rec.state is State.SUPERSEDED:  # not a lock outcome; the nearest old name
        return "rolled_back"
    return "failed"  # failed (inject or revert) and lost


def migration_state(rec: FaultRecord, *, duration_given: bool) -> str:
    """``starting | running | completed | rolled_back | failed | rollback_failed``."""
    if rec.state is State.PENDING:
        return "starting"
    if rec.state in (State.ACTIVE, State.REVERTING):
        return "running" if duration_given else "completed"
    if rec.state in (State.REVERTED, State.SUPERSEDED):
        return "rolled_back"
    if rec.state is State.FAILED and rec.failed_during == "revert":
        return "rollback_failed"
    return "failed"


def check_target_url(ctx: AppContext, url: str | None) -> str | None:
    """The target name for a compat ``target_database_url``: ``None`` (the default target)
    when absent; the configured target whose DSN it equals; otherwise an ad-hoc target when
    the targets file says ``allow_ad_hoc_targets = true`` (403 ``ad_hoc_target_refused``
    if not). Ad-hoc targets must have opted in like any other.

    The URL is never echoed back, not even in the error.
    """
    if url is None:
        return None
    try:
        asked = parse_dsn(url)
    except errors.InvalidInput:
        raise errors.InvalidInput(
            "target_database_url does not parse as a PostgreSQL connection URL",
            code="invalid_target_url",
            field="target_database_url",
        ) from None
    default = ctx.target()
    if asked == parse_dsn(default.dsn):
        return default.name
    for name, known in ctx.engine.targets.items():
        with contextlib.suppress(errors.InvalidInput):
            if asked == parse_dsn(known.dsn):
                ctx.targets.setdefault(name, known)
                return name
    if not ctx.settings.allow_ad_hoc_targets:
        raise errors.Forbidden(
            "ad-hoc targets are not allowed on this server: target_database_url must be omitted or name "
            "a configured target database (a targets file may set allow_ad_hoc_targets = true)",
            code="ad_hoc_target_refused",
            field="target_database_url",
        )
    # keyed by this instance: the name reveals nothing about the URL (its password included)
    digest = hmac.new(ctx.engine.instance.encode(), json.dumps(sorted(asked.items())).encode(), "sha256")
    target = ctx.engine.add_target(Target(f"adhoc-{digest.hexdigest()[:12]}", url))
    ctx.targets.setdefault(target.name, target)
    return target.name


def remember(ctx: AppContext, attack_id: str, family: str, facts: dict[str, Any]) -> None:
    """Keep the compat-only facts of an attack (what the old interface reports but the
    engine does not know); forget those whose fault the engine no longer keeps."""
    store = ctx.compat_attacks
    store[attack_id] = {"family": family, **facts}
    if len(store) > HISTORY_LIMIT:
        known = {r.id for r in ctx.engine.all()}
        for fid in [fid for fid in store if fid not in known]:
            del store[fid]


def recall(ctx: AppContext, attack_id: str, family: str, noun: str) -> tuple[FaultRecord, dict[str, Any]]:
    """The engine record and compat facts of an attack of ``family``; 404 otherwise."""
    facts = ctx.compat_attacks.get(attack_id)
    if facts is None or facts.get("family") != family:
        raise errors.NotFound(f"no {noun} attack with id {attack_id!r}", code="unknown_attack")
    try:
        return ctx.engine.get(attack_id), facts
    except errors.NotFound:
        raise errors.NotFound(f"no {noun} attack with id {attack_id!r}", code="unknown_attack") from None


def rename_field(exc: errors.DbChaosError, fields: dict[str, str]) -> errors.DbChaosError:
    """The same error with native field paths (``params.limit``) renamed to the compat
    query parameter (``lock_count``), in the field and in the message; first match wins."""
    field = exc.field
    if field is None:
        return exc
    for native, compat in fields.items():  # a key ending in "." matches only paths below it
        if field == native or field.startswith(native if native.endswith(".") else native + "."):
            return type(exc)(exc.message.replace(field, compat), code=exc.code, field=compat, extra=exc.extra)
    return exc
