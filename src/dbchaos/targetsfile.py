"""The targets file: the databases a dbchaos server may touch, and what it may do there.

A TOML file (``dbchaos serve --targets-file F`` or ``DBCHAOS_TARGETS_FILE``)::

    allow_ad_hoc_targets = false        # compat target_database_url may name other databases
    webhooks = ["https://hooks.example.com/dbchaos"]   # get every event (docs/events.md)

    [targets.staging]
    dsn_env = "STAGING_DATABASE_URL"    # or dsn = "..." / dsn_file = "/run/secrets/staging-dsn"
    default = true
    alembic_ini = "/srv/app/alembic.ini"
    deny_tables = ["public.payments"]
    max_duration_s = 300
    max_faults = 5
    connection_reserve = 10

    [targets.staging.halt]              # revert every fault here when one of these is exceeded
    max_blocked_sessions = 50
    max_blocked_for_s = 30

DSNs are secrets: they are read here and kept only inside :class:`dbchaos.targets.Target`
(whose ``repr`` leaves them out); errors never quote them. Relative paths (``dsn_file``,
``alembic_ini``) are relative to the file's folder. Every validation error names the
target and the key. See ``docs/targets.md``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbchaos.errors import InvalidInput
from dbchaos.faults.migration.graph import RevisionGraph
from dbchaos.targets import HaltRules, Target, TargetPolicy, parse_dsn
from dbchaos.webhooks import check_webhook_url

#: a target name appears in URLs (``/v1/targets/{name}/migrations``) and in answers
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: PostgreSQL's identifier limit (longer names are truncated by the server, i.e. another name)
_MAX_IDENTIFIER_BYTES = 63
_MAX_DSN_FILE_BYTES = 64 * 1024

_TOP_KEYS = frozenset({"allow_ad_hoc_targets", "targets", "webhooks"})
_DSN_KEYS = ("dsn", "dsn_env", "dsn_file")
_LIST_KEYS = ("allow_schemas", "deny_schemas", "allow_tables", "deny_tables")
_TARGET_KEYS = frozenset(
    {*_DSN_KEYS, *_LIST_KEYS, "default", "alembic_ini", "max_duration_s", "max_faults", "connection_reserve", "halt"}
)
#: ``[targets.NAME.halt]``: rule -> (kind, lowest allowed, whether the lowest is allowed, unit for messages)
_HALT_KEYS: dict[str, tuple[type, float, bool, str]] = {
    "max_blocked_sessions": (int, 0, True, "a whole number of sessions, 0 or more"),
    "max_blocked_for_s": (float, 0, False, "a positive number of seconds"),
    "max_fault_age_s": (float, 0, False, "a positive number of seconds"),
    "max_connections_used_pct": (float, 0, False, "a percentage above 0 and at most 100"),
}


@dataclass(frozen=True)
class TargetsFile:
    """A parsed, validated targets file."""

    path: Path
    targets: Mapping[str, Target]
    default: str
    allow_ad_hoc_targets: bool = False
    #: target name -> its alembic.ini (absolute), where configured
    alembic_inis: Mapping[str, Path] = field(default_factory=dict)
    #: URLs that get every event as a JSON POST (docs/events.md), besides ``--webhook``
    webhooks: tuple[str, ...] = ()

    def load_graphs(self) -> dict[str, RevisionGraph]:
        """Each configured target's revision graph. Imports the revision files (runs their
        code): the paths come only from the operator's file."""
        graphs: dict[str, RevisionGraph] = {}
        for name, ini in self.alembic_inis.items():
            try:
                graphs[name] = RevisionGraph.from_alembic_ini(ini)
            except Exception as exc:
                raise InvalidInput(
                    f"{self.path}: target {name!r}: cannot read the Alembic scripts of alembic_ini {str(ini)!r}: "
                    f"{getattr(exc, 'message', exc)}",
                    code="invalid_targets_file",
                    field=f"targets.{name}.alembic_ini",
                ) from exc
        return graphs


def load_targets_file(path: str | Path, environ: Mapping[str, str] | None = None) -> TargetsFile:
    """Read and validate a targets file; ``InvalidInput`` (code ``invalid_targets_file``)
    naming the target and key on any problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise _error(p, f"cannot read it: {exc.strerror or exc}", "targets_file") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # tomllib's messages give a position, never the text around it
        raise _error(p, f"not valid TOML: {exc}", "targets_file") from None
    return parse_targets(data, p, os.environ if environ is None else environ)


def parse_targets(data: Mapping[str, Any], path: Path, environ: Mapping[str, str]) -> TargetsFile:
    """Validate the parsed TOML of a targets file (see :func:`load_targets_file`)."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise _error(path, f"unknown top-level key {unknown[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})", unknown[0])
    ad_hoc = data.get("allow_ad_hoc_targets", False)
    if not isinstance(ad_hoc, bool):
        raise _error(path, "allow_ad_hoc_targets must be true or false", "allow_ad_hoc_targets")
    tables = data.get("targets")
    if not isinstance(tables, dict) or not tables:
        raise _error(path, "no targets: add at least one [targets.<name>] table with a dsn", "targets")
    base = path.parent
    targets: dict[str, Target] = {}
    inis: dict[str, Path] = {}
    defaults: list[str] = []
    for name, body in tables.items():
        if not _NAME.fullmatch(name):
            raise _error(
                path,
                f"target name {name!r} must be 1-63 letters, digits, '_' or '-' (starting with a letter or digit)",
                f"targets.{name}",
            )
        if not isinstance(body, dict):
            raise _error(path, f"target {name!r} must be a table ([targets.{name}])", f"targets.{name}")
        targets[name], ini, is_default = _target(path, base, name, body, environ)
        if ini is not None:
            inis[name] = ini
        if is_default:
            defaults.append(name)
    if len(defaults) > 1:
        raise _error(path, f"targets {defaults[0]!r} and {defaults[1]!r} both say default = true; mark one", "targets")
    if not defaults:
        if len(targets) > 1:
            raise _error(path, "several targets and none says default = true; mark one", "targets")
        defaults = list(targets)
    return TargetsFile(path, targets, defaults[0], ad_hoc, inis, _webhooks(path, data.get("webhooks", [])))


def _webhooks(path: Path, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise _error(path, 'webhooks must be a list of URLs (webhooks = ["https://..."])', "webhooks")
    for url in value:
        try:
            check_webhook_url(url, "webhooks")
        except InvalidInput as exc:
            raise _error(path, exc.message, "webhooks") from None
    return tuple(value)


def _target(
    path: Path, base: Path, name: str, body: dict[str, Any], environ: Mapping[str, str]
) -> tuple[Target, Path | None, bool]:
    def bad(key: str, problem: str) -> InvalidInput:
        return _error(path, f"target {name!r}: {key} {problem}", f"targets.{name}.{key}")

    unknown = sorted(set(body) - _TARGET_KEYS)
    if unknown:
        raise bad(unknown[0], f"is not a known key (known: {', '.join(sorted(_TARGET_KEYS))})")
    given = [k for k in _DSN_KEYS if k in body]
    if len(given) != 1:
        raise _error(
            path,
            f"target {name!r}: give exactly one of dsn, dsn_env or dsn_file"
            + (f" (found {', '.join(given)})" if given else ""),
            f"targets.{name}.dsn",
        )
    key = given[0]
    value = body[key]
    if not isinstance(value, str) or not value.strip():
        raise bad(key, "must be a non-empty string")
    if key == "dsn":
        dsn = value
    elif key == "dsn_env":
        if not _ENV_NAME.fullmatch(value):
            raise bad(key, "must be the name of an environment variable (letters, digits and '_')")
        dsn = environ.get(value, "")
        if not dsn.strip():
            raise bad(key, f"names the environment variable {value!r}, which is not set or empty")
    else:
        secret = _resolve(base, value)
        try:
            with secret.open("rb") as fh:
                content = fh.read(_MAX_DSN_FILE_BYTES + 1)
        except OSError as exc:
            raise bad(key, f"cannot be read ({str(secret)!r}: {exc.strerror or type(exc).__name__})") from None
        if len(content) > _MAX_DSN_FILE_BYTES:
            raise bad(key, f"{str(secret)!r} is too large for a DSN")
        try:
            dsn = content.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise bad(key, f"{str(secret)!r} is not UTF-8 text") from None
        if not dsn:
            raise bad(key, f"{str(secret)!r} is empty")
    try:
        parse_dsn(dsn)
    except InvalidInput:
        raise bad(key, "does not give a PostgreSQL connection string that parses") from None

    is_default = body.get("default", False)
    if not isinstance(is_default, bool):
        raise bad("default", "must be true or false")
    ini: Path | None = None
    if "alembic_ini" in body:
        raw_ini = body["alembic_ini"]
        if not isinstance(raw_ini, str) or not raw_ini.strip():
            raise bad("alembic_ini", "must be a path to the application's alembic.ini")
        ini = _resolve(base, raw_ini)
        if not ini.is_file():
            raise bad("alembic_ini", f"{str(ini)!r} is not a file")

    lists = {k: _names(bad, k, body.get(k, []), tables=k.endswith("_tables")) for k in _LIST_KEYS}
    max_duration = body.get("max_duration_s")
    if max_duration is not None and (
        not isinstance(max_duration, int | float)
        or isinstance(max_duration, bool)
        or not math.isfinite(max_duration)
        or max_duration <= 0
    ):
        raise bad("max_duration_s", "must be a positive number of seconds")
    max_faults = body.get("max_faults")
    if max_faults is not None and (not isinstance(max_faults, int) or isinstance(max_faults, bool) or max_faults < 1):
        raise bad("max_faults", "must be a whole number of at least 1")
    reserve = body.get("connection_reserve", 0)
    if not isinstance(reserve, int) or isinstance(reserve, bool) or reserve < 0:
        raise bad("connection_reserve", "must be a whole number of at least 0")
    policy = TargetPolicy(
        allow_schemas=lists["allow_schemas"],
        deny_schemas=lists["deny_schemas"],
        allow_tables=lists["allow_tables"],
        deny_tables=lists["deny_tables"],
        max_duration_s=None if max_duration is None else float(max_duration),
        max_faults=max_faults,
        connection_reserve=reserve,
        halt=_halt(path, name, body.get("halt", {})),
    )
    return Target(name, dsn, policy), ini, is_default


def _halt(path: Path, name: str, value: Any) -> HaltRules:
    """The ``[targets.NAME.halt]`` table (docs/guard-rails.md)."""
    if not isinstance(value, dict):
        raise _error(path, f"target {name!r}: halt must be a table ([targets.{name}.halt])", f"targets.{name}.halt")

    def bad(key: str, problem: str) -> InvalidInput:
        return _error(path, f"target {name!r}: halt.{key} {problem}", f"targets.{name}.halt.{key}")

    rules: dict[str, Any] = {}
    for key, raw in value.items():
        if key not in _HALT_KEYS:
            raise bad(key, f"is not a known rule (known: {', '.join(sorted(_HALT_KEYS))})")
        kind, lowest, lowest_ok, what = _HALT_KEYS[key]
        number = isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw)
        if (
            not number
            or (kind is int and not isinstance(raw, int))
            or raw < lowest
            or (raw == lowest and not lowest_ok)
            or (key == "max_connections_used_pct" and raw > 100)
        ):
            raise bad(key, f"must be {what}")
        rules[key] = int(raw) if kind is int else float(raw)
    return dataclasses.replace(HaltRules(), **rules)


def _names(bad: Any, key: str, value: Any, *, tables: bool) -> tuple[str, ...]:
    what = "'schema.table' names" if tables else "schema names"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad(key, f"must be a list of {what}")
    out: list[str] = []
    for v in value:
        parts = v.split(".", 1) if tables else [v]
        if (
            not v
            or (tables and len(parts) != 2)
            or any(not part or len(part.encode()) > _MAX_IDENTIFIER_BYTES for part in parts)
        ):
            raise bad(
                key,
                f"has {v!r}, which is not {'a schema.table name' if tables else 'a schema name'} "
                f"(exact catalog spelling, each part 1-{_MAX_IDENTIFIER_BYTES} bytes)",
            )
        if v not in out:
            out.append(v)
    return tuple(out)


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _error(path: Path, problem: str, field: str) -> InvalidInput:
    return InvalidInput(f"targets file {str(path)!r}: {problem}", code="invalid_targets_file", field=field)
