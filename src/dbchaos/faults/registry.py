"""Kind name -> fault class, and ``describe()`` for the API and the CLI."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from dbchaos.errors import InvalidInput
from dbchaos.faults.base import Fault, FaultParams


class Registry:
    """The fault kinds an engine can run."""

    def __init__(self, kinds: Iterable[type[Fault[Any]]]) -> None:
        self._kinds: dict[str, type[Fault[Any]]] = {}
        for k in kinds:
            if k.kind in self._kinds:
                raise ValueError(f"duplicate fault kind {k.kind!r}")
            self._kinds[k.kind] = k

    @property
    def names(self) -> list[str]:
        return sorted(self._kinds)

    def get(self, name: str) -> type[Fault[Any]]:
        try:
            return self._kinds[name]
        except (KeyError, TypeError):
            raise InvalidInput(
                f"unknown fault kind {name!r}; known kinds: {', '.join(self.names)}",
                code="unknown_kind",
                field="kind",
            ) from None

    def build(self, name: str, params: Mapping[str, Any] | None) -> Fault[Any]:
        """Validate ``params`` for kind ``name`` and return a fault ready to prepare."""
        cls = self.get(name)
        if params is not None and not isinstance(params, Mapping):
            raise InvalidInput("params must be an object", field="params")
        bad = bad_text(params, "params")
        if bad is not None:
            raise bad
        try:
            model: FaultParams = cls.params_model.model_validate(dict(params or {}))
        except ValidationError as exc:
            raise invalid_from_validation(exc, "params") from None
        except InvalidInput as exc:  # raised by a name validator inside the model
            field = f"params.{exc.field}" if exc.field else "params"
            raise InvalidInput(exc.message, code=exc.code, field=field) from None
        return cls(model)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "kind": name,
                "summary": self._kinds[name].summary,
                "description": (self._kinds[name].__doc__ or "").strip() or self._kinds[name].summary,
                "params_schema": self._kinds[name].params_model.model_json_schema(),
            }
            for name in self.names
        ]


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL byte, which PostgreSQL text cannot hold"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (it contains a lone surrogate)"
    return None


def bad_text(value: Any, field: str) -> InvalidInput | None:
    """A 422 for the first string (key or value) in ``value`` that PostgreSQL could not take as
    text, or ``None``. Checked before anything reaches the driver, which would fail on it with
    an error that is not about input (and JSON allows both: ``"\\u0000"``, ``"\\udc80"``)."""
    if isinstance(value, str):
        why = _text_problem(value)
        return None if why is None else InvalidInput(f"{field} {why}", code="invalid_text", field=field)
    if isinstance(value, Mapping):
        for key, item in value.items():
            why = _text_problem(key) if isinstance(key, str) else None
            if why is not None:  # the key is left out of the answer: it may not even encode
                return InvalidInput(f"a key of {field} {why}", code="invalid_text", field=field)
            found = bad_text(item, f"{field}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = bad_text(item, f"{field}.{i}")
            if found is not None:
                return found
    return None


def invalid_from_validation(exc: ValidationError, prefix: str) -> InvalidInput:
    """Turn pydantic's first error into one clear ``InvalidInput`` with its field path."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ())]
    field = ".".join([prefix, *loc]) if loc else prefix
    ctx = err.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, InvalidInput):
        return InvalidInput(inner.message, code=inner.code, field=field)
    msg = str(err.get("msg", "is invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err.get("type") == "extra_forbidden":
        msg = "is not a parameter of this kind"
    elif err.get("type") == "missing":
        msg = "is required"
    return InvalidInput(f"{field}: {msg}", field=field)


def default_registry() -> Registry:
    from dbchaos.faults.advisory_lock import AdvisoryLock
    from dbchaos.faults.connection_exhaustion import ConnectionExhaustion
    from dbchaos.faults.idle_transaction import IdleTransaction
    from dbchaos.faults.migration.behind import Behind
    from dbchaos.faults.migration.conflicting_object import ConflictingObject
    from dbchaos.faults.migration.future_revision import FutureRevision
    from dbchaos.faults.migration.hidden_object import HiddenObject
    from dbchaos.faults.migration.lock_queue import MigrationLockQueue
    from dbchaos.faults.migration.locked_version_table import LockedVersionTable
    from dbchaos.faults.migration.missing_table import MissingTable
    from dbchaos.faults.migration.missing_version import MissingVersion
    from dbchaos.faults.migration.multiple_heads import MultipleHeads
    from dbchaos.faults.migration.unknown_revision import UnknownRevision
    from dbchaos.faults.row_lock import RowLock
    from dbchaos.faults.table_lock import TableLock

    kinds: list[type[Fault[Any]]] = [TableLock, RowLock, AdvisoryLock, IdleTransaction, ConnectionExhaustion]
    kinds += [UnknownRevision, FutureRevision, MissingVersion, Behind, MultipleHeads]
    kinds += [LockedVersionTable, MigrationLockQueue]
    kinds += [MissingTable, HiddenObject, ConflictingObject]
    return Registry(kinds)
