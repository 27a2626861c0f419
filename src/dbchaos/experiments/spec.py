"""Experiment files: parse and validate a YAML experiment, every error with its line.

An experiment names a ``target``, the ``probes`` that play the service's clients, a steady-
state ``hypothesis`` (tolerances such as ``p95 < 300ms`` per probe and phase), a ``method``
(faults with start offsets and durations), ``halt`` conditions, the ``observer`` rate, the
``baseline`` and ``recovery`` window lengths and where the ``report`` goes. The format is
documented for users in ``docs/experiments.md``; the tolerance grammar lives in
:mod:`dbchaos.experiments.conditions`.

:func:`validate_experiment` reads a file and returns a frozen :class:`Experiment`, or raises
:class:`ExperimentFileError` (an ``InvalidInput``) listing **every** problem found, each
with the file's line and column: YAML syntax, unknown keys (with a suggestion), missing
keys, bad durations or rates, unknown fault kinds, and each kind's parameters checked by its
own ``params_model`` (an error in ``params`` points at that parameter's line). Nothing here
touches a database: checks that need one (does the table exist?) happen when the runner
prepares the faults, before anything is injected.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic import ValidationError as PydanticError

from dbchaos.cli.parsing import parse_duration
from dbchaos.errors import InvalidInput
from dbchaos.experiments.conditions import Condition, ConditionError, parse_condition
from dbchaos.experiments.source import Located, PathT, SourceError, load
from dbchaos.faults.registry import Registry, default_registry
from dbchaos.probes.base import Probe
from dbchaos.probes.http import HttpProbe, HttpProbeConfig
from dbchaos.probes.sql import SqlProbe, SqlProbeConfig
from dbchaos.targets import describe_dsn, parse_dsn

FORMAT_VERSION = 1
DEFAULT_BASELINE_S = 5.0
DEFAULT_RECOVERY_S = 10.0
DEFAULT_OBSERVER_RATE_HZ = 2.0
DEFAULT_PROBE_RATE_HZ = 5.0
DEFAULT_PROBE_CONCURRENCY = 10
DEFAULT_HTTP_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: the longest a fault may last (the server's ``max_duration_s`` default)
DEFAULT_MAX_DURATION_S = 3600.0
MAX_FILE_BYTES = 1024 * 1024

PHASES = ("baseline", "during", "after", "overall")
Phase = Literal["baseline", "during", "after", "overall"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}")
_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(?:/\s*(s|sec|second|m|min|minute))?\s*$")
_DURATION_HINT = "a duration such as 500ms, 10s or 2m"


# ---------------------------------------------------------------------------- errors
@dataclass(frozen=True)
class Problem:
    """One thing wrong with an experiment file, and where."""

    line: int | None
    column: int | None
    field: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "column": self.column, "field": self.field, "message": self.message}

    def render(self, source: str) -> str:
        where = source
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        return f"{where}: {self.message}"


class ExperimentFileError(InvalidInput):
    """An experiment file that cannot be run: every problem, each with its line and column.

    ``line``/``column``/``field`` are those of the first problem (in file order);
    ``problems`` has them all. ``str()`` gives one ``file:line:column: message`` per line.
    """

    code = "invalid_experiment"

    def __init__(self, source: str, problems: list[Problem]) -> None:
        ordered = sorted(problems, key=lambda p: (p.line is None, p.line or 0, p.column or 0))
        first = ordered[0]
        more = f" (and {len(ordered) - 1} more)" if len(ordered) > 1 else ""
        super().__init__(
            first.render(source) + more,
            field=first.field,
            extra={
                "source": source,
                "line": first.line,
                "column": first.column,
                "problems": [p.as_dict() for p in ordered],
            },
        )
        self.source = source
        self.problems = ordered
        self.line = first.line
        self.column = first.column

    def __str__(self) -> str:
        return "\n".join(p.render(self.source) for p in self.problems)


# ---------------------------------------------------------------------------- value types
def _seconds(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError(f"must be {_DURATION_HINT}")
    if isinstance(v, str):
        try:
            return parse_duration(v)
        except InvalidInput as exc:
            raise ValueError(exc.message) from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"must be {_DURATION_HINT} (a number means seconds)")
    return float(v)


def _positive(v: float) -> float:
    if v <= 0:
        raise ValueError("must be longer than 0")
    return v


def _rate(v: Any) -> float:
    """Requests per second: a number, ``"10/s"`` or ``"120/m"``."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise ValueError("must be a number of requests per second, or e.g. '10/s' or '120/m'")
    if isinstance(v, str):
        m = _RATE.match(v)
        if not m:
            raise ValueError(f"{v!r} is not a rate; use e.g. 10, '10/s' or '120/m'")
        value = float(m.group(1)) / (60.0 if (m.group(2) or "s").startswith("m") else 1.0)
    else:
        value = float(v)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be above 0")
    return value


def _name(v: Any) -> Any:
    if isinstance(v, str) and not _NAME.fullmatch(v):
        raise ValueError("must be 1-63 letters, digits, '_', '.', ':' or '-', starting with a letter or digit")
    return v


def _listify(v: Any) -> Any:
    return [v] if isinstance(v, str | int) and not isinstance(v, bool) else v


Seconds = Annotated[float, BeforeValidator(_seconds)]
PositiveSeconds = Annotated[float, BeforeValidator(_seconds), AfterValidator(_positive)]
Rate = Annotated[float, BeforeValidator(_rate)]
Name = Annotated[StrictStr, AfterValidator(_name)]
Names = Annotated[list[StrictStr], BeforeValidator(_listify)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Top(BaseModel):
    """The top-level scalars (the lists are checked entry by entry, see below)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: Literal[1] = 1
    name: StrictStr | None = None
    description: StrictStr | None = None
    labels: dict[StrictStr, StrictStr] = {}
    target: StrictStr
    probes: list[Any] = []
    hypothesis: list[Any] = []
    method: list[Any] = Field(min_length=1)
    halt: list[Any] = []
    observer: Any = None  # checked by _Observer
    baseline: Seconds = DEFAULT_BASELINE_S
    recovery: Seconds = DEFAULT_RECOVERY_S
    report: Any = None  # checked by _Validator._report


TOP_KEYS = (
    "version",
    "name",
    "description",
    "labels",
    "target",
    "probes",
    "hypothesis",
    "method",
    "halt",
    "observer",
    "baseline",
    "recovery",
    "report",
)


class _Observer(_Model):
    rate: Rate = DEFAULT_OBSERVER_RATE_HZ


class _Report(_Model):
    json_path: StrictStr | None = Field(None, alias="json")
    html: StrictStr | None = None


class _Fault(_Model):
    kind: StrictStr
    params: dict[StrictStr, Any] = {}
    at: Seconds = 0.0
    duration: PositiveSeconds
    acquire_timeout: Seconds | None = None
    name: Name | None = None
    labels: dict[StrictStr, StrictStr] = {}


class _ProbeBase(_Model):
    name: Name
    type: Literal["http", "sql"]
    rate: Rate = DEFAULT_PROBE_RATE_HZ
    concurrency: StrictInt = DEFAULT_PROBE_CONCURRENCY
    #: after the run, asks whether a failed request's write committed anyway: an URL with
    #: ``{request_id}`` (HTTP; 2xx = committed) or a query with ``%(request_id)s`` (SQL; a row = committed)
    committed_check: StrictStr | None = None


class _HttpProbe(_ProbeBase):
    type: Literal["http"]
    url: StrictStr
    method: StrictStr = "GET"
    headers: dict[StrictStr, StrictStr] = {}
    body: StrictStr | None = None
    json_body: Any = Field(None, alias="json")
    timeout: PositiveSeconds = DEFAULT_HTTP_TIMEOUT_S
    expect_status: Annotated[list[StrictInt], BeforeValidator(_listify)] = []
    follow_redirects: StrictBool = False
    verify_tls: StrictBool = True


class _SqlProbe(_ProbeBase):
    type: Literal["sql"]
    statement: StrictStr
    dsn: StrictStr | None = None
    dsn_env: StrictStr | None = None
    connect_timeout: PositiveSeconds = DEFAULT_CONNECT_TIMEOUT_S
    statement_timeout: PositiveSeconds | None = None
    lock_timeout: PositiveSeconds | None = None
    timeout: PositiveSeconds | None = None
    application_name: StrictStr | None = None


class _Tolerance(_Model):
    tolerance: StrictStr
    probe: Names = []
    phase: Phase = "overall"


class _Halt(_Model):
    condition: StrictStr
    probe: Names = []


# ---------------------------------------------------------------------------- the result
@dataclass(frozen=True)
class TargetRef:
    """The experiment's target: a configured name, or a DSN (a secret: never shown)."""

    name: str | None
    dsn: str | None = field(default=None, repr=False)
    line: int | None = None

    def describe(self) -> str:
        return self.name if self.name is not None else describe_dsn(self.dsn or "")


@dataclass(frozen=True)
class ProbeSpec:
    name: str
    type: Literal["http", "sql"]
    config: HttpProbeConfig | SqlProbeConfig
    line: int | None = None
    #: a SQL probe without ``dsn``/``dsn_env`` connects to the experiment's target
    uses_target_dsn: bool = False
    #: see ``committed_check`` in docs/experiments.md
    committed_check: str | None = None

    def build(self, target_dsn: str | None = None) -> Probe:
        """The probe, ready to open (``target_dsn``: needed when ``uses_target_dsn``)."""
        if isinstance(self.config, HttpProbeConfig):
            return HttpProbe(self.config)
        cfg = self.config
        if self.uses_target_dsn:
            if target_dsn is None:
                raise ValueError(f"probe {self.name!r} runs against the target: give its DSN")
            cfg = replace(cfg, dsn=target_dsn)
        return SqlProbe(cfg)


@dataclass(frozen=True)
class FaultStep:
    """One fault of the method, ``at_s`` seconds after the method starts (the baseline's end)."""

    index: int
    name: str
    kind: str
    params: Mapping[str, Any]
    at_s: float
    duration_s: float
    acquire_timeout_s: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    line: int | None = None

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s


@dataclass(frozen=True)
class Tolerance:
    """One tolerance of the hypothesis: ``condition`` must hold for each probe of ``probes``
    (empty: every probe; observer metrics: the database) over ``phase``."""

    condition: Condition
    probes: tuple[str, ...] = ()
    phase: Phase = "overall"
    line: int | None = None

    @property
    def text(self) -> str:
        return self.condition.text


@dataclass(frozen=True)
class HaltCondition:
    """Stop the experiment early (revert everything, exit 4) once ``condition`` holds."""

    condition: Condition
    probes: tuple[str, ...] = ()
    line: int | None = None

    @property
    def text(self) -> str:
        return self.condition.text


@dataclass(frozen=True)
class Experiment:
    """A validated experiment file. Offsets are seconds; the method starts when the baseline ends."""

    source: str
    name: str
    target: TargetRef
    method: tuple[FaultStep, ...]
    probes: tuple[ProbeSpec, ...] = ()
    hypothesis: tuple[Tolerance, ...] = ()
    halt: tuple[HaltCondition, ...] = ()
    observer_rate_hz: float = DEFAULT_OBSERVER_RATE_HZ
    baseline_s: float = DEFAULT_BASELINE_S
    recovery_s: float = DEFAULT_RECOVERY_S
    report_json: Path | None = None
    report_html: Path | None = None
    description: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def method_s(self) -> float:
        """From the start of the method to the end of its last fault."""
        return max(step.end_s for step in self.method)

    @property
    def total_s(self) -> float:
        return self.baseline_s + self.method_s + self.recovery_s

    def fault_windows(self) -> list[tuple[float, float]]:
        """The ``during`` phase: the union of the fault windows, merged where they overlap
        or touch, as (start, end) offsets from the method's start."""
        windows: list[tuple[float, float]] = []
        for start, end in sorted((s.at_s, s.end_s) for s in self.method):
            if windows and start <= windows[-1][1]:
                windows[-1] = (windows[-1][0], max(windows[-1][1], end))
            else:
                windows.append((start, end))
        return windows

    def describe(self) -> dict[str, Any]:
        """The experiment as a run journal shows it (no secret)."""
        return {
            "source": self.source,
            "name": self.name,
            "description": self.description,
            "labels": dict(self.labels),
            "target": self.target.describe(),
            "probes": [_describe_probe(p) for p in self.probes],
            "hypothesis": [{"tolerance": t.text, "probes": list(t.probes), "phase": t.phase} for t in self.hypothesis],
            "method": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "params": dict(s.params),
                    "at_s": s.at_s,
                    "duration_s": s.duration_s,
                    "acquire_timeout_s": s.acquire_timeout_s,
                    "labels": dict(s.labels),
                }
                for s in self.method
            ],
            "halt": [{"condition": h.text, "probes": list(h.probes)} for h in self.halt],
            "observer": {"rate_hz": self.observer_rate_hz},
            "baseline_s": self.baseline_s,
            "recovery_s": self.recovery_s,
            "report": {
                "json": None if self.report_json is None else str(self.report_json),
                "html": None if self.report_html is None else str(self.report_html),
            },
        }


# ---------------------------------------------------------------------------- validation
@dataclass
class _Checker:
    doc: Located
    problems: list[Problem] = field(default_factory=list)

    def add(self, path: PathT, message: str, *, key: bool = False, offset: int | None = None) -> None:
        mark = self.doc.column_in(path, offset) if offset is not None else self.doc.mark(path, key=key)
        self.problems.append(Problem(mark.line, mark.column, _dotted(path), message))

    def line(self, path: PathT) -> int:
        return self.doc.mark(path).line

    def model(self, cls: type[_Model] | type[_Top], value: Any, path: PathT) -> Any:
        """Validate ``value`` (found at ``path``) with ``cls``; record every error; None if any."""
        if not isinstance(value, dict):
            self.add(path, f"{_display(path) or 'the file'} must be a mapping (key: value lines)")
            return None
        try:
            return cls.model_validate(value)
        except PydanticError as exc:
            for err in exc.errors():
                self._pydantic(cls, value, path, err)
            return None

    def _pydantic(self, cls: type[BaseModel], value: Any, path: PathT, err: Any) -> None:
        where = (*path, *_data_path(value, tuple(err.get("loc", ()))))
        kind = err.get("type")
        msg = str(err.get("msg", "is invalid"))
        msg = msg.removeprefix("Value error, ")
        label = _display(where)
        if kind == "extra_forbidden":
            key = str(where[-1])
            known = sorted(_keys(cls))
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(known)}"
            self.add(where, f"{label}: unknown key ({hint})", key=True)
        elif kind == "missing":
            self.add(where, f"{label} is required")
        elif kind == "literal_error":
            self.add(where, f"{label}: {msg.replace('Input should be', 'must be')}")
        else:
            self.add(where, f"{label}: {msg.replace('Input should be', 'must be')}")


def _keys(cls: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in cls.model_fields.items()]


def _data_path(value: Any, loc: tuple[Any, ...]) -> PathT:
    """Pydantic's error location as a path into the data (its union/validator tags dropped)."""
    out: list[str | int] = []
    cur = value
    for i, el in enumerate(loc):
        if (isinstance(cur, dict) and el in cur) or (
            isinstance(cur, list) and isinstance(el, int) and 0 <= el < len(cur)
        ):
            out.append(el)
            cur = cur[el]
        elif i == len(loc) - 1 and isinstance(el, str) and re.fullmatch(r"[A-Za-z_][\w-]*", el):
            out.append(el)  # a missing or unknown key
    return tuple(out)


def _display(path: PathT) -> str:
    text = ""
    for p in path:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else p)
    return text


def _dotted(path: PathT) -> str | None:
    return ".".join(str(p) for p in path) or None


def validate_experiment(
    path: str | os.PathLike[str],
    *,
    registry: Registry | None = None,
    known_targets: Collection[str] | None = None,
    environ: Mapping[str, str] | None = None,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
) -> Experiment:
    """Read and validate the experiment file at ``path``.

    ``registry``: the fault kinds (default: every built-in kind). ``known_targets``: the
    target names the runner can resolve (``None``: any name is accepted here). ``environ``:
    where ``dsn_env`` is looked up (default ``os.environ``). ``max_duration_s``: the longest a
    fault may last. Raises :class:`ExperimentFileError`.
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ExperimentFileError(
            str(p), [Problem(None, None, None, f"cannot read the file: {exc.strerror}")]
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ExperimentFileError(str(p), [Problem(None, None, None, "the file is larger than 1 MiB")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ExperimentFileError(str(p), [Problem(line, None, None, "the file is not UTF-8 text")]) from None
    return parse_experiment(
        text,
        source=str(p),
        base_dir=p.resolve().parent,
        default_name=p.stem,
        registry=registry,
        known_targets=known_targets,
        environ=environ,
        max_duration_s=max_duration_s,
    )


def parse_experiment(
    text: str,
    *,
    source: str = "<experiment>",
    base_dir: Path | None = None,
    default_name: str = "experiment",
    registry: Registry | None = None,
    known_targets: Collection[str] | None = None,
    environ: Mapping[str, str] | None = None,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
) -> Experiment:
    """Validate an experiment given as text (YAML, or JSON, which is YAML too), e.g. from an
    API request. Relative report paths are relative to ``base_dir`` (default: the current
    folder). See :func:`validate_experiment`."""
    try:
        doc = load(text)
    except SourceError as exc:
        raise ExperimentFileError(source, [Problem(exc.line, exc.column, None, exc.message)]) from None
    v = _Validator(
        _Checker(doc),
        registry or default_registry(),
        known_targets,
        os.environ if environ is None else environ,
        max_duration_s,
        base_dir or Path.cwd(),
    )
    experiment = v.run(source, default_name)
    if v.c.problems or experiment is None:
        raise ExperimentFileError(source, v.c.problems or [Problem(1, 1, None, "the experiment is not valid")])
    return experiment


@dataclass
class _Validator:
    c: _Checker
    registry: Registry
    known_targets: Collection[str] | None
    environ: Mapping[str, str]
    max_duration_s: float
    base_dir: Path

    def run(self, source: str, default_name: str) -> Experiment | None:
        data = self.c.doc.data
        if not isinstance(data, dict):
            self.c.add((), "an experiment file is a mapping of keys (target, probes, method...) at the top level")
            return None
        for key in data:
            if key not in TOP_KEYS:
                near = difflib.get_close_matches(key, TOP_KEYS, n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(TOP_KEYS)}"
                self.c.add((key,), f"{key}: unknown key ({hint})", key=True)
        top = self.c.model(_Top, data, ())
        # the lists are checked even when a top-level scalar is wrong: report everything at once
        lists = {k: data.get(k) for k in ("probes", "hypothesis", "method", "halt")}
        target = self._target(top.target) if top is not None else None
        probes = self._probes(lists["probes"]) if isinstance(lists["probes"], list) else ()
        method = self._method(lists["method"]) if isinstance(lists["method"], list) else ()
        # references are checked against every probe declared, valid or not (no knock-on errors)
        names = (
            {str(p["name"]) for p in lists["probes"] if isinstance(p, dict) and isinstance(p.get("name"), str)}
            if isinstance(lists["probes"], list)
            else None
        )
        baseline = top.baseline if top is not None else DEFAULT_BASELINE_S
        recovery = top.recovery if top is not None else DEFAULT_RECOVERY_S
        hypothesis = (
            self._hypothesis(lists["hypothesis"], names, baseline, recovery)
            if isinstance(lists["hypothesis"], list)
            else ()
        )
        halt = self._halt(lists["halt"], names) if isinstance(lists["halt"], list) else ()
        observer = self.c.model(_Observer, data.get("observer") or {}, ("observer",))
        report = self._report(data.get("report")) if top is not None else (None, None)
        if top is None or target is None or observer is None or self.c.problems:
            return None
        return Experiment(
            source=source,
            name=top.name or default_name,
            target=target,
            method=method,
            probes=probes,
            hypothesis=hypothesis,
            halt=halt,
            observer_rate_hz=observer.rate,
            baseline_s=top.baseline,
            recovery_s=top.recovery,
            report_json=report[0],
            report_html=report[1],
            description=None if top.description is None else top.description.strip(),
            labels=dict(top.labels),
        )

    # ------------------------------------------------------------ sections
    def _target(self, value: str) -> TargetRef | None:
        path: PathT = ("target",)
        line = self.c.line(path)
        text = value.strip()
        if "=" in text or "://" in text:
            try:
                parse_dsn(text)
            except InvalidInput:
                self.c.add(path, "target: this DSN does not parse as a PostgreSQL connection string")
                return None
            return TargetRef(None, text, line)
        if not _TARGET_NAME.fullmatch(text):
            self.c.add(path, "target: give a target name from the targets file, or a DSN (postgresql://...)")
            return None
        if self.known_targets is not None and text not in self.known_targets:
            known = ", ".join(sorted(self.known_targets)) or "none"
            self.c.add(path, f"target: unknown target {text!r} (known: {known})")
            return None
        return TargetRef(text, None, line)

    def _probes(self, items: list[Any]) -> tuple[ProbeSpec, ...]:
        out: list[ProbeSpec] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            path: PathT = ("probes", i)
            kind = item.get("type") if isinstance(item, dict) else None
            if isinstance(item, dict) and kind not in ("http", "sql"):
                if "type" not in item:
                    self.c.add(path, f"probes[{i}].type is required: http or sql")
                else:
                    self.c.add((*path, "type"), f"probes[{i}].type: must be 'http' or 'sql'")
                continue
            m = self.c.model(_HttpProbe if kind == "http" else _SqlProbe, item, path)
            if m is None:
                continue
            if m.name in seen:
                self.c.add(
                    (*path, "name"), f"probes[{i}].name: {m.name!r} is already the name of probes[{seen[m.name]}]"
                )
                continue
            seen[m.name] = i
            spec = self._probe(m, path)
            if spec is not None:
                out.append(spec)
        return tuple(out)

    def _probe(self, m: _HttpProbe | _SqlProbe, path: PathT) -> ProbeSpec | None:
        line = self.c.line(path)
        try:
            if isinstance(m, _HttpProbe):
                extra: dict[str, Any] = {"json_body": m.json_body} if "json_body" in m.model_fields_set else {}
                cfg: HttpProbeConfig | SqlProbeConfig = HttpProbeConfig(
                    name=m.name,
                    url=m.url,
                    method=m.method,
                    headers=dict(m.headers),
                    body=m.body,
                    timeout_s=m.timeout,
                    rate_hz=m.rate,
                    concurrency=m.concurrency,
                    expect_status=tuple(m.expect_status),
                    follow_redirects=m.follow_redirects,
                    verify_tls=m.verify_tls,
                    **extra,
                )
                return ProbeSpec(m.name, "http", cfg, line, committed_check=self._committed_check(m, path))
            dsn, own = self._probe_dsn(m, path)
            if dsn is None:
                return None
            cfg = SqlProbeConfig(
                name=m.name,
                dsn=dsn,
                statement=m.statement.strip(),
                rate_hz=m.rate,
                concurrency=m.concurrency,
                connect_timeout_s=m.connect_timeout,
                statement_timeout_s=m.statement_timeout,
                lock_timeout_s=m.lock_timeout,
                timeout_s=m.timeout,
                application_name=m.application_name,
            )
            check = self._committed_check(m, path)
            return ProbeSpec(m.name, "sql", cfg, line, uses_target_dsn=not own, committed_check=check)
        except InvalidInput as exc:
            key = (exc.field or "").rsplit(".", 1)[-1] or "name"
            key = {"json_body": "json"}.get(key, key)
            message = exc.message.split(": ", 1)[-1] if exc.message.startswith("probe ") else exc.message
            message = message.removeprefix(key + " ")
            self.c.add((*path, key), f"{_display((*path, key))}: {message}")
            return None

    def _committed_check(self, m: _ProbeBase, path: PathT) -> str | None:
        check = m.committed_check
        if check is None:
            return None
        needle = "{request_id}" if m.type == "http" else "%(request_id)s"
        if needle not in check:
            self.c.add((*path, "committed_check"), f"{_display(path)}: committed_check must contain {needle}")
            return None
        if m.type == "http" and not check.startswith(("http://", "https://")):
            self.c.add((*path, "committed_check"), f"{_display(path)}: committed_check must be an http(s) URL")
            return None
        return check

    def _probe_dsn(self, m: _SqlProbe, path: PathT) -> tuple[str | None, bool]:
        if m.dsn is not None and m.dsn_env is not None:
            self.c.add((*path, "dsn_env"), f"{_display(path)}: give dsn or dsn_env, not both")
            return None, False
        if m.dsn_env is not None:
            where = (*path, "dsn_env")
            if not _ENV_NAME.fullmatch(m.dsn_env):
                self.c.add(where, f"{_display(where)}: must be the name of an environment variable")
                return None, False
            dsn = self.environ.get(m.dsn_env, "")
            if not dsn.strip():
                self.c.add(where, f"{_display(where)}: the environment variable {m.dsn_env!r} is not set or empty")
                return None, False
            return dsn, True
        if m.dsn is not None:
            return m.dsn, True
        return "", False  # the target's DSN, filled in by the runner

    def _method(self, items: list[Any]) -> tuple[FaultStep, ...]:
        out: list[FaultStep] = []
        for i, item in enumerate(items):
            path: PathT = ("method", i)
            m = self.c.model(_Fault, item, path)
            if m is None:
                # the kind and its params are still worth checking: report everything at once
                if isinstance(item, dict) and isinstance(item.get("kind"), str):
                    params = item.get("params", {})
                    if isinstance(params, dict):
                        self._fault_params(item["kind"], params, path)
                continue
            if m.duration > self.max_duration_s:
                self.c.add(
                    (*path, "duration"),
                    f"{_display((*path, 'duration'))}: at most {self.max_duration_s:g} s (the server's maximum)",
                )
                continue
            if not self._fault_params(m.kind, m.params, path):
                continue
            out.append(
                FaultStep(
                    index=i,
                    name=m.name or f"{m.kind}#{i + 1}",
                    kind=m.kind,
                    params=dict(m.params),
                    at_s=m.at,
                    duration_s=m.duration,
                    acquire_timeout_s=m.acquire_timeout,
                    labels=dict(m.labels),
                    line=self.c.line(path),
                )
            )
        first: dict[str, int] = {}
        for s in out:
            if s.name in first:
                self.c.add(
                    ("method", s.index, "name"),
                    f"method[{s.index}].name: {s.name!r} is already the name of method[{first[s.name]}]",
                )
            first.setdefault(s.name, s.index)
        return tuple(out)

    def _fault_params(self, kind: str, params: dict[str, Any], path: PathT) -> bool:
        """Check ``kind`` and its ``params`` with the kind's own model; False (recorded) if wrong."""
        try:
            self.registry.build(kind, params)
        except InvalidInput as exc:
            where = (*path, *_field_path(exc.field or "kind"))
            message = exc.message
            if exc.field and message.startswith(exc.field + ":"):
                message = message[len(exc.field) + 1 :].strip()
            self.c.add(where, f"{_display(where)}: {message}")
            return False
        return True

    def _condition(
        self, items: list[Any], i: int, section: str, model: type[_Tolerance] | type[_Halt]
    ) -> tuple[Any, Condition, PathT] | None:
        path: PathT = (section, i)
        item = items[i]
        key = "tolerance" if model is _Tolerance else "condition"
        if isinstance(item, str):
            m: Any = model.model_validate({key: item})
            text_path = path
        elif not isinstance(item, dict):
            self.c.add(path, f"{_display(path)}: write a condition such as 'p95 < 300ms', or a mapping with {key}")
            return None
        else:
            m = self.c.model(model, item, path)
            if m is None:
                return None
            text_path = (*path, key)
        text = m.tolerance if model is _Tolerance else m.condition
        try:
            cond = parse_condition(text, allow_window=model is _Halt, allow_recovery=model is _Tolerance)
        except ConditionError as exc:
            self.c.add(text_path, f"{_display(text_path)}: {exc.message}", offset=exc.offset)
            return None
        return m, cond, path

    def _scope(self, probes: list[str], cond: Condition, path: PathT, names: set[str] | None) -> bool:
        if cond.is_observer_metric and probes:
            self.c.add((*path, "probe"), f"{_display(path)}: {cond.metric} is measured on the database, not per probe")
            return False
        if names is None:
            return True
        for j, name in enumerate(probes):
            if name not in names:
                known = ", ".join(sorted(names)) or "none"
                self.c.add((*path, "probe", j), f"{_display(path)}: no probe is named {name!r} (probes: {known})")
                return False
        if cond.is_probe_metric and not names:
            self.c.add(path, f"{_display(path)}: {cond.metric} measures probes, and the experiment has none")
            return False
        return True

    def _hypothesis(
        self, items: list[Any], names: set[str] | None, baseline_s: float, recovery_s: float
    ) -> tuple[Tolerance, ...]:
        out: list[Tolerance] = []
        for i in range(len(items)):
            parsed = self._condition(items, i, "hypothesis", _Tolerance)
            if parsed is None:
                continue
            m, cond, path = parsed
            if not self._scope(list(m.probe), cond, path, names):
                continue
            phase: Phase = m.phase
            if cond.is_recovery:
                if isinstance(items[i], dict) and "phase" in items[i] and phase != "after":
                    self.c.add((*path, "phase"), f"{_display(path)}: 'recovers within' is measured after the faults")
                    continue
                phase = "after"
                if cond.value > recovery_s:
                    self.c.add(
                        path,
                        f"{_display(path)}: the recovery window ({recovery_s:g} s) is shorter than "
                        f"{cond.text!r} needs; make recovery at least {cond.value:g}s",
                    )
                    continue
            if phase == "baseline" and baseline_s <= 0:
                self.c.add(path, f"{_display(path)}: phase baseline, but the baseline window is 0 s")
                continue
            if phase == "after" and recovery_s <= 0:
                self.c.add(path, f"{_display(path)}: phase after, but the recovery window is 0 s")
                continue
            out.append(Tolerance(cond, tuple(m.probe), phase, self.c.line(path)))
        return tuple(out)

    def _halt(self, items: list[Any], names: set[str] | None) -> tuple[HaltCondition, ...]:
        out: list[HaltCondition] = []
        for i in range(len(items)):
            parsed = self._condition(items, i, "halt", _Halt)
            if parsed is None:
                continue
            m, cond, path = parsed
            if self._scope(list(m.probe), cond, path, names):
                out.append(HaltCondition(cond, tuple(m.probe), self.c.line(path)))
        return tuple(out)

    def _report(self, value: Any) -> tuple[Path | None, Path | None]:
        if value is None:
            return None, None
        if isinstance(value, str):
            if not value.strip():
                self.c.add(("report",), "report: give a file path, e.g. reports/run.json")
                return None, None
            p = self.base_dir / value
            if p.suffix == ".html":
                return p.with_suffix(".json"), p
            return p, p.with_suffix(".html")
        m = self.c.model(_Report, value, ("report",))
        if m is None:
            return None, None
        return (
            None if m.json_path is None else self.base_dir / m.json_path,
            None if m.html is None else self.base_dir / m.html,
        )


def _describe_probe(p: ProbeSpec) -> dict[str, Any]:
    if not p.uses_target_dsn:
        return p.build().describe()
    return p.build("dbname=target").describe() | {"database": "(the target)"}


def _field_path(dotted: str) -> PathT:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))
