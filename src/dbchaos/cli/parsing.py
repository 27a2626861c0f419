"""Parsing what people type: durations (``500ms``, ``30s``, ``5m``, ``1h``) and
``--param key=value`` pairs."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

from dbchaos.errors import InvalidInput

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str, field: str = "duration") -> float:
    """Seconds in ``text``: ``500ms``, ``30s``, ``1.5m``, ``1h`` or a bare number of seconds."""
    m = _DURATION.match(text)
    if not m:
        raise InvalidInput(f"{text!r} is not a duration; use e.g. 500ms, 30s, 5m or 1h", field=field)
    value = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not math.isfinite(value):
        raise InvalidInput(f"{text!r} is not a finite duration", field=field)
    return value


def parse_params(pairs: Iterable[str], params_json: str | None, schema: dict[str, Any]) -> dict[str, Any]:
    """Build a kind's params from ``--params-json`` and ``--param key=value`` pairs.

    Values parse as JSON where they can (``where='{"id":[1,2]}'``, ``limit=5``), else are
    strings; repeated keys build lists; a single value for a list parameter becomes a list.
    """
    params: dict[str, Any] = {}
    if params_json:
        try:
            loaded = json.loads(params_json)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"--params-json is not valid JSON: {exc.msg}", field="params") from None
        if not isinstance(loaded, dict):
            raise InvalidInput("--params-json must be a JSON object", field="params")
        params.update(loaded)
    repeated: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidInput(f"--param {pair!r} is not of the form key=value", field="params")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        repeated.setdefault(key, []).append(value)
    props = schema.get("properties", {})
    for key, values in repeated.items():
        if len(values) > 1 or (_is_array(props.get(key, {})) and not isinstance(values[0], list)):
            params[key] = values
        else:
            params[key] = values[0]
    return params


def _is_array(prop: dict[str, Any]) -> bool:
    if prop.get("type") == "array":
        return True
    return any(_is_array(p) for p in prop.get("anyOf", []))
