"""Experiment files: a complete valid example, and every kind of mistake reported at its line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from dbchaos.experiments import (
    ExperimentFileError,
    validate_experiment,
)
from dbchaos.experiments.conditions import ValueKind
from dbchaos.experiments.spec import parse_experiment
from dbchaos.probes import HttpProbe, HttpProbeConfig, SqlProbe, SqlProbeConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "experiments" / "table-lock.yaml"

GOOD = """\
target: staging
probes:
  - name: api
    type: http
    url: http://127.0.0.1:8000/items/1
  - name: db
    type: sql
    statement: SELECT 1
hypothesis:
  - p95 < 300ms
method:
  - kind: table-lock
    params:
      tables: [items]
      mode: ACCESS EXCLUSIVE
    at: 2s
    duration: 10s
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` line containing ``needle`` (the test's own ground truth)."""
    hits = [i for i, line in enumerate(textwrap.dedent(text).splitlines(), 1) if needle in line]
    return hits[nth - 1]


def column_of(text: str, needle: str) -> int:
    line = textwrap.dedent(text).splitlines()[line_of(text, needle) - 1]
    return line.index(needle) + 1


def error(tmp_path: Path, text: str, **kwargs: object) -> ExperimentFileError:
    with pytest.raises(ExperimentFileError) as info:
        validate_experiment(write(tmp_path, text), **kwargs)  # type: ignore[arg-type]
    return info.value


# ---------------------------------------------------------------------------- valid files
def test_the_documented_example_is_valid_and_complete() -> None:
    exp = validate_experiment(EXAMPLE)
    assert exp.name == "items-table-lock" and exp.labels == {"owner": "team-catalog", "ticket": "OPS-1234"}
    assert exp.target.name == "staging" and exp.target.dsn is None
    assert [p.name for p in exp.probes] == ["get-item", "stock-update"]
    http, sql = exp.probes
    assert isinstance(http.config, HttpProbeConfig)
    assert (http.config.rate_hz, http.config.concurrency, http.config.timeout_s) == (20.0, 20, 2.0)
    assert http.config.expect_status == (200,)
    assert isinstance(sql.config, SqlProbeConfig) and sql.uses_target_dsn
    assert (sql.config.lock_timeout_s, sql.config.statement_timeout_s, sql.config.connect_timeout_s) == (0.5, 2.0, 2.0)
    assert sql.config.statement == "UPDATE items SET stock = stock - 1 WHERE id = 1"
    assert isinstance(http.build(), HttpProbe) and isinstance(sql.build("dbname=x"), SqlProbe)
    with pytest.raises(ValueError, match="runs against the target"):
        sql.build()
    [step] = exp.method
    assert (step.name, step.kind, step.at_s, step.duration_s, step.acquire_timeout_s) == (
        "lock-items",
        "table-lock",
        0.0,
        10.0,
        5.0,
    )
    assert step.params == {"tables": ["items"], "mode": "ACCESS EXCLUSIVE"}
    assert [(t.text, t.probes, t.phase) for t in exp.hypothesis] == [
        ("errors < 1%", (), "overall"),
        ("p95 < 300ms", (), "baseline"),
        ("p95 < 2s", ("get-item",), "during"),
        ("timeouts == 0", ("stock-update",), "after"),
        ("recovers within 2s", (), "after"),
    ]
    errors = exp.hypothesis[0].condition
    assert (errors.metric, errors.op, errors.value, errors.value_kind) == ("errors", "<", 0.01, ValueKind.FRACTION)
    assert [(h.text, h.probes, h.condition.window_s) for h in exp.halt] == [
        ("blocked_sessions > 50", (), None),
        ("errors > 50% over 5s", ("get-item",), 5.0),
    ]
    assert (exp.observer_rate_hz, exp.baseline_s, exp.recovery_s, exp.total_s) == (2.0, 5.0, 10.0, 25.0)
    assert exp.report_json == EXAMPLE.parent / "reports" / "items-table-lock.json"
    assert exp.report_html == EXAMPLE.parent / "reports" / "items-table-lock.html"
    assert exp.method[0].line == line_of(EXAMPLE.read_text(), "- name: lock-items")
    doc = exp.describe()
    assert json.loads(json.dumps(doc)) == doc and doc["probes"][1]["database"] == "(the target)"


def test_defaults_sequences_and_overlaps(tmp_path: Path) -> None:
    text = GOOD + (
        "  - kind: advisory-lock\n"
        "    params: {keys: [42]}\n"
        "    at: 5s\n"
        "    duration: 30s\n"
        "  - kind: idle-transaction\n"
        "    at: 1m\n"
        "    duration: 500ms\n"
    )
    exp = validate_experiment(write(tmp_path, text))
    assert exp.name == "exp" and exp.baseline_s == 5.0 and exp.recovery_s == 10.0 and exp.observer_rate_hz == 2.0
    assert [s.name for s in exp.method] == ["table-lock#1", "advisory-lock#2", "idle-transaction#3"]
    assert exp.fault_windows() == [(2.0, 35.0), (60.0, 60.5)]
    assert exp.method_s == 60.5
    api, db = exp.probes
    assert (api.config.rate_hz, api.config.concurrency) == (5.0, 10)
    assert db.uses_target_dsn and exp.report_json is None


def test_a_dsn_target_json_text_rates_and_dsn_env(tmp_path: Path) -> None:
    doc = {
        "target": "postgresql://app@db.internal:5432/shop",
        "probes": [
            {"name": "w", "type": "sql", "statement": "SELECT 1", "dsn_env": "SHOP_DSN", "rate": "120/m"},
            {"name": "h", "type": "http", "url": "http://x.test/", "rate": 0.5, "expect_status": 204},
        ],
        "method": [{"kind": "table-lock", "params": {"tables": ["items"]}, "duration": 1}],
        "report": {"html": "out/r.html"},
    }
    exp = parse_experiment(json.dumps(doc), environ={"SHOP_DSN": "dbname=shop"}, base_dir=tmp_path)
    assert exp.target.name is None and exp.target.describe() == "app@db.internal:5432/shop"
    w, h = exp.probes
    assert isinstance(w.config, SqlProbeConfig) and w.config.dsn == "dbname=shop" and not w.uses_target_dsn
    assert w.config.rate_hz == 2.0 and h.config.rate_hz == 0.5
    assert isinstance(h.config, HttpProbeConfig) and h.config.expect_status == (204,)
    assert exp.report_json is None and exp.report_html == tmp_path / "out" / "r.html"


# ---------------------------------------------------------------------------- errors, by line
def test_unknown_fault_kind_names_its_line(tmp_path: Path) -> None:
    text = GOOD.replace("kind: table-lock", "kind: tabel-lock")
    e = error(tmp_path, text)
    assert e.line == line_of(text, "tabel-lock") and e.column == column_of(text, "tabel-lock")
    assert e.field == "method.0.kind" and e.code == "invalid_experiment"
    assert "unknown fault kind 'tabel-lock'" in e.message and "table-lock" in e.message
    assert str(e).startswith(f"{tmp_path / 'exp.yaml'}:{e.line}:{e.column}: method[0].kind: unknown fault kind")


@pytest.mark.parametrize("bad", ["10 seconds", "-5s", "0s", "true", "1d"])
def test_bad_duration_names_its_line(tmp_path: Path, bad: str) -> None:
    text = GOOD.replace("duration: 10s", f"duration: {bad}")
    e = error(tmp_path, text)
    assert e.line == line_of(text, "duration:") and e.field == "method.0.duration"
    assert e.message.split(": ", 1)[1].startswith("method[0].duration:")


def test_bad_offset_names_its_line(tmp_path: Path) -> None:
    text = GOOD.replace("at: 2s", "at: soon")
    e = error(tmp_path, text)
    assert e.line == line_of(text, "at: soon") and "'soon' is not a duration" in e.message


def test_missing_target_names_a_line(tmp_path: Path) -> None:
    text = GOOD.replace("target: staging\n", "")
    e = error(tmp_path, text)
    assert (e.line, e.column, e.field) == (1, 1, "target") and "target is required" in e.message


def test_missing_method_and_empty_method(tmp_path: Path) -> None:
    text = GOOD[: GOOD.index("method:")]
    assert "method is required" in error(tmp_path, text).message
    e = error(tmp_path, text + "method: []\n")
    assert e.line == line_of(text + "method: []\n", "method:") and "at least 1" in e.message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("target: staging\nprobes:\n  - name: [unclosed\n", "  - name"),  # the line PyYAML names
        ("target: staging\nmethod:\n  - kind: table-lock\n   duration: 1s\n", "duration"),
        ("target: staging\n\tmethod: []\n", "method"),
        ('target: "unterminated\nmethod: []\n', "method"),
    ],
)
def test_yaml_syntax_errors_name_their_line(tmp_path: Path, text: str, needle: str) -> None:
    import yaml

    with pytest.raises(yaml.YAMLError) as info:  # what PyYAML itself says, independently
        yaml.safe_load(text)
    mark = getattr(info.value, "problem_mark", None)
    assert mark is not None
    e = error(tmp_path, text)
    assert e.message.split(": ", 1)[1].startswith("YAML syntax error")
    assert (e.line, e.column) == (mark.line + 1, mark.column + 1)
    assert e.line in (line_of(text, needle), line_of(text, needle) + 1)


def test_empty_file_and_a_list_at_the_top(tmp_path: Path) -> None:
    assert error(tmp_path, "# nothing\n").message.endswith("the file is empty")
    e = error(tmp_path, "- target: x\n")
    assert e.line == 1 and "mapping of keys" in e.message


def test_unknown_keys_name_their_line_and_suggest(tmp_path: Path) -> None:
    text = GOOD.replace("duration: 10s", "durration: 10s").replace("hypothesis:", "hypothesys:")
    text = text.replace("    statement: SELECT 1", "    statement: SELECT 1\n    stament_timeout: 1s")
    e = error(tmp_path, text)
    got = {(p.line, p.column, p.message) for p in e.problems}
    assert (
        line_of(text, "hypothesys"),
        1,
        "hypothesys: unknown key (did you mean 'hypothesis'?)",
    ) in got
    assert (
        line_of(text, "stament_timeout"),
        5,
        "probes[1].stament_timeout: unknown key (did you mean 'statement_timeout'?)",
    ) in got
    assert (line_of(text, "durration"), 5, "method[0].durration: unknown key (did you mean 'duration'?)") in got
    # ... and the missing duration is reported at its fault entry
    assert (line_of(text, "- kind: table-lock"), 5, "method[0].duration is required") in got
    assert [p.line for p in e.problems] == sorted(p.line for p in e.problems if p.line is not None)


def test_a_params_error_points_at_the_parameter(tmp_path: Path) -> None:
    text = GOOD.replace("mode: ACCESS EXCLUSIVE", "mode: VERY EXCLUSIVE")
    e = error(tmp_path, text)
    assert (e.line, e.field) == (line_of(text, "VERY EXCLUSIVE"), "method.0.params.mode")
    assert e.column == column_of(text, "VERY EXCLUSIVE")
    assert "VERY EXCLUSIVE" in e.message

    text = GOOD.replace("mode: ACCESS EXCLUSIVE", "mode: ACCESS EXCLUSIVE\n      nowait: true")
    e = error(tmp_path, text)
    assert (e.line, e.field) == (line_of(text, "nowait"), "method.0.params.nowait")
    assert "is not a parameter of this kind" in e.message

    text = GOOD.replace("tables: [items]", "tables: []")
    e = error(tmp_path, text)
    assert (e.line, e.field) == (line_of(text, "tables: []"), "method.0.params.tables")

    text = GOOD.replace("      tables: [items]\n", "")
    e = error(tmp_path, text)  # a missing parameter: the line of params
    assert (e.line, e.field) == (line_of(text, "params:"), "method.0.params.tables")
    assert "is required" in e.message


def test_a_bad_tolerance_points_into_the_string(tmp_path: Path) -> None:
    text = GOOD.replace("p95 < 300ms", "p95 < 300")
    e = error(tmp_path, text)
    assert e.line == line_of(text, "p95 < 300") and e.column == column_of(text, "300")
    assert e.message.endswith("hypothesis[0]: 300 needs a unit: ms, s, m or h")

    text = GOOD.replace("  - p95 < 300ms", "  - tolerance: 'latency < 1s'\n    phase: during")
    e = error(tmp_path, text)
    assert e.line == line_of(text, "latency") and e.column == column_of(text, "latency")
    assert "unknown metric 'latency'" in e.message


@pytest.mark.parametrize(
    ("hypothesis", "needle", "message"),
    [
        ("  - tolerance: p95 < 1s\n    probe: nope", "probe: nope", "no probe is named 'nope'"),
        ("  - tolerance: p95 < 1s\n    phase: later", "phase: later", "must be 'baseline', 'during', 'after' or"),
        ("  - tolerance: blocked_sessions < 5\n    probe: api", "probe: api", "measured on the database"),
        ("  - recovers within 30s", "recovers", "recovery window (10 s) is shorter"),
        ("  - tolerance: recovers within 1s\n    phase: during", "phase: during", "measured after the faults"),
        ("  - errors > 5% over 10s", "errors", "belongs to halt conditions only"),
        ("  - 42", "42", "write a condition such as"),
    ],
)
def test_hypothesis_mistakes(tmp_path: Path, hypothesis: str, needle: str, message: str) -> None:
    text = GOOD.replace("  - p95 < 300ms", hypothesis)
    e = error(tmp_path, text)
    assert e.line == line_of(text, needle) and message in e.message


def test_halt_mistakes(tmp_path: Path) -> None:
    text = GOOD + "halt:\n  - recovers within 5s\n  - condition: errors > 50%\n    probe: ghost\n"
    e = error(tmp_path, text)
    assert [(p.line, p.message.split(": ", 1)[1]) for p in e.problems] == [
        (line_of(text, "recovers within 5s"), "'recovers within' is a tolerance, not a halt condition"),
        (line_of(text, "probe: ghost"), "no probe is named 'ghost' (probes: api, db)"),
    ]


def test_probe_mistakes(tmp_path: Path) -> None:
    text = (
        GOOD.replace("url: http://127.0.0.1:8000/items/1", "url: ftp://nowhere/")
        .replace("type: sql", "type: sql\n    rate: fast")
        .replace("  - name: db", "  - name: api")
    )
    e = error(tmp_path, text)
    got = [(p.line, p.message) for p in e.problems]
    assert got == [
        (line_of(text, "ftp://"), "probes[0].url: must be an absolute http:// or https:// URL"),
        (line_of(text, "rate: fast"), "probes[1].rate: 'fast' is not a rate; use e.g. 10, '10/s' or '120/m'"),
    ]
    text = GOOD.replace("  - name: db", "  - name: api")
    e = error(tmp_path, text)
    assert (e.line, e.field) == (line_of(text, "name: api", 2), "probes.1.name") and "already the name" in e.message
    text = GOOD.replace("    type: sql\n", "")
    e = error(tmp_path, text)
    assert e.line == line_of(text, "name: db") and "probes[1].type is required: http or sql" in e.message
    text = GOOD.replace("    statement: SELECT 1", "    statement: SELECT 1\n    dsn_env: NOT_SET_ANYWHERE")
    e = error(tmp_path, text, environ={})
    assert e.line == line_of(text, "dsn_env") and "'NOT_SET_ANYWHERE' is not set" in e.message


def test_target_mistakes(tmp_path: Path) -> None:
    e = error(tmp_path, GOOD, known_targets={"prod-replica", "lab"})
    assert e.line == 1 and e.message.endswith("target: unknown target 'staging' (known: lab, prod-replica)")
    text = GOOD.replace("target: staging", "target: host='unterminated")
    assert "does not parse" in error(tmp_path, text).message
    text = GOOD.replace("target: staging", "target: on")  # YAML 1.1 reads `on` as true
    assert "target: must be a valid string" in error(tmp_path, text).message


def test_duplicate_keys_and_merge_keys(tmp_path: Path) -> None:
    text = GOOD.replace("    at: 2s\n", "    at: 2s\n    at: 3s\n")
    e = error(tmp_path, text)
    assert e.line == line_of(text, "at: 3s") and "the key 'at' is given twice" in e.message
    text = GOOD.replace("  - name: api\n", "  - &base\n    name: api\n    timeout: 1s\n").replace(
        "  - name: db\n", "  - <<: *base\n    name: api2\n    timeout: 3s\n  - name: db\n"
    )
    exp = validate_experiment(write(tmp_path, text))
    api, api2, _ = exp.probes
    assert isinstance(api2.config, HttpProbeConfig) and isinstance(api.config, HttpProbeConfig)
    assert (api2.name, api2.config.url, api2.config.timeout_s, api.config.timeout_s) == (
        "api2",
        api.config.url,
        3.0,
        1.0,
    )


def test_every_problem_is_reported_at_once_in_file_order(tmp_path: Path) -> None:
    text = (
        GOOD.replace("target: staging", "target: ''").replace("p95 < 300ms", "p95 <").replace("at: 2s", "at: later")
        + "  - kind: nope\n    duration: 1s\n"
    )
    e = error(tmp_path, text)
    assert [(p.line, p.field) for p in e.problems] == [
        (line_of(text, "target:"), "target"),
        (line_of(text, "p95 <"), "hypothesis.0"),
        (line_of(text, "at: later"), "method.0.at"),
        (line_of(text, "kind: nope"), "method.1.kind"),
    ]
    assert e.message.endswith("(and 3 more)")
    assert str(e).count("\n") == 3
    assert e.extra["problems"][0] == {"line": 1, "column": 9, "field": "target", "message": e.problems[0].message}


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ExperimentFileError) as info:
        validate_experiment(tmp_path / "missing.yaml")
    assert info.value.line is None and "cannot read the file" in info.value.message
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"target: staging\nname: caf\xe9\n")
    with pytest.raises(ExperimentFileError) as info:
        validate_experiment(p)
    assert info.value.line == 2 and "not UTF-8" in info.value.message


def test_params_are_checked_even_when_other_keys_of_the_fault_are_wrong(tmp_path: Path) -> None:
    text = GOOD.replace("mode: ACCESS EXCLUSIVE", "mode: ACCESS EXCLUSIV").replace("duration: 10s", "durration: 10s")
    e = error(tmp_path, text)
    assert [(p.line, p.field) for p in e.problems] == [
        (line_of(text, "- kind: table-lock"), "method.0.duration"),
        (line_of(text, "ACCESS EXCLUSIV"), "method.0.params.mode"),
        (line_of(text, "durration"), "method.0.durration"),
    ]
