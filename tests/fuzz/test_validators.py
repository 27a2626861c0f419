"""Property tests for every parameter validator (issue 6, Acceptance 2): each kind's parameter
model, identifier parsing, the names of lock modes, row-lock strengths and isolation levels,
``--param`` and duration parsing, the targets file and the tokens file.

Valid input is accepted and normalised consistently (a normalised value normalises to itself;
every accepted spelling gives the same answer; identifiers split as PostgreSQL's own
``parse_ident`` splits them); invalid input is refused with :class:`InvalidInput` naming the
field — never with another exception, which the API would turn into a 500.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dbchaos.api.auth import TokenScope as Scope
from dbchaos.api.auth import TokenStore, generate_token
from dbchaos.cli.parsing import parse_duration, parse_params
from dbchaos.errors import InvalidInput
from dbchaos.faults.advisory_lock import BIGINT_MAX, BIGINT_MIN, INT4_MAX, INT4_MIN
from dbchaos.faults.base import Fault
from dbchaos.faults.identifiers import MAX_IDENTIFIER_BYTES, parse_ident, quote, table_ref
from dbchaos.faults.migration.base import VersionTableParams, version_table_name
from dbchaos.faults.names import ISOLATION_LEVELS, LOCK_MODES, ROW_STRENGTHS, isolation_level, lock_mode, row_strength
from dbchaos.faults.registry import default_registry
from dbchaos.targetsfile import TargetsFile, parse_targets
from tests.pg import PgServer

REGISTRY = default_registry()
T = TypeVar("T")
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: for the tests that run once per kind
PER_KIND = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- strategies --------------------------------------------------------------------------------------------------

#: any text, lone surrogates included (JSON can carry them: "\udc80"), NUL and controls too
lone_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
any_text = st.text(st.characters(codec=None) | lone_surrogates | st.sampled_from('"\x00.;-/* \t'), max_size=80)
#: what hostile input looks like, around identifiers
tricky = st.sampled_from(['"', '""', ".", ";", "--", "/*", "*/", " ", "\x00", "É", "ß", "İ", "\u202e", "😀", "$", "_"])
ident_text = st.lists(st.sampled_from(string.ascii_letters + "019") | tricky, max_size=12).map("".join)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=12,
)


def name_part() -> st.SearchStrategy[str]:
    """One PostgreSQL name: 1..63 bytes, no NUL, valid Unicode."""
    return st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20).filter(
        lambda s: len(s.encode()) <= MAX_IDENTIFIER_BYTES
    )


plain_name = st.from_regex(r"[a-z_][a-z0-9_$]{0,30}", fullmatch=True)
table_name = (
    plain_name
    | st.builds(lambda s, t: f"{s}.{t}", plain_name, plain_name)
    | name_part().map(quote)
    | st.fixed_dictionaries({"name": name_part()}, optional={"schema": name_part()})
)


def spelled(canonical: str, *, suffix: str = "") -> st.SearchStrategy[str]:
    """``canonical`` as people write it: any case, spaces/underscores/hyphens, CamelCase (+ suffix)."""
    words = canonical.split()
    camel = "".join(w.capitalize() for w in words)
    return st.one_of(
        st.just(canonical),
        st.sampled_from([" ", "_", "-"]).map(lambda sep: sep.join(words)),
        st.sampled_from([str.lower, str.upper, str.title]).map(lambda f: f(canonical)),
        st.just(camel + suffix),
        st.just(f"  {canonical.lower()}  "),
    )


modes = st.sampled_from(LOCK_MODES).flatmap(lambda m: spelled(m, suffix="Lock").map(lambda s: (m, s)))
strengths = st.sampled_from(ROW_STRENGTHS).flatmap(
    lambda s: st.one_of(spelled(s), spelled(s.removeprefix("FOR "))).map(lambda t: (s, t))
)
isolations = st.sampled_from(ISOLATION_LEVELS).flatmap(lambda i: spelled(i).map(lambda t: (i, t)))

advisory_key = st.integers(BIGINT_MIN, BIGINT_MAX) | st.tuples(
    st.integers(INT4_MIN, INT4_MAX), st.integers(INT4_MIN, INT4_MAX)
).map(list)
version_table = {"version_table": name_part(), "version_table_schema": name_part()}
revision = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=32)
columns = st.lists(name_part(), min_size=1, max_size=5)
where_values = st.lists(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=5)
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=5,
)

#: valid parameters of every kind (the engine still checks names against the catalog in ``prepare``)
VALID: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "table-lock": st.fixed_dictionaries(
        {"tables": st.lists(table_name, min_size=1, max_size=5)}, optional={"mode": modes.map(lambda m: m[1])}
    ),
    "row-lock": st.fixed_dictionaries(
        {"table": table_name},
        optional={
            "strength": strengths.map(lambda s: s[1]),
            "where": st.dictionaries(name_part(), where_values, max_size=3),
            "limit": st.integers(1, 1_000_000),
        },
    ),
    "advisory-lock": st.fixed_dictionaries(
        {"keys": st.lists(advisory_key, min_size=1, max_size=10, unique_by=lambda k: str(k))},
        optional={"shared": st.booleans()},
    ),
    "idle-transaction": st.fixed_dictionaries(
        {}, optional={"tables": st.lists(table_name, max_size=5), "isolation": isolations.map(lambda i: i[1])}
    ),
    "connection-exhaustion": st.one_of(
        st.fixed_dictionaries({"connections": st.integers(1, 100_000)}),
        st.fixed_dictionaries({"leave": st.integers(0, 100_000)}),
    ),
    "unknown-revision": st.fixed_dictionaries({}, optional=version_table),
    "future-revision": st.fixed_dictionaries({}, optional=version_table),
    "missing-version": st.fixed_dictionaries({}, optional=version_table),
    "missing-table": st.fixed_dictionaries({}, optional=version_table),
    "behind": st.fixed_dictionaries(
        {},
        optional={
            **version_table,
            "revision": revision,
            "steps": st.integers(1, 10_000),
            "parent": st.integers(0, 16),
        },
    ),
    "multiple-heads": st.fixed_dictionaries(
        {}, optional={**version_table, "variant": st.sampled_from(["overlap", "branches"]), "revision": revision}
    ),
    "locked-version-table": st.fixed_dictionaries(
        {}, optional={**version_table, "mode": modes.map(lambda m: m[1]), "tables": st.lists(table_name, max_size=5)}
    ),
    "migration-lock-queue": st.fixed_dictionaries({"table": table_name}),
    "hidden-object": st.fixed_dictionaries({"table": table_name}, optional={**version_table, "column": name_part()}),
    "conflicting-object": st.one_of(
        st.fixed_dictionaries({"object": st.just("table"), "table": table_name}, optional=version_table),
        st.fixed_dictionaries(
            {"object": st.just("column"), "table": table_name, "column": name_part(), "type": name_part()},
            optional=version_table,
        ),
        st.fixed_dictionaries(
            {"object": st.just("index"), "table": table_name, "index": name_part(), "columns": columns},
            optional=version_table,
        ),
    ),
}

#: a value of the wrong type or out of range for a field, whatever the field
wrong_values = st.one_of(
    st.integers().filter(lambda i: abs(i) > 2**63),
    st.floats(allow_nan=True),
    st.lists(st.lists(st.integers(), min_size=3), min_size=1),
    st.dictionaries(any_text, st.integers(), min_size=1),
    st.builds(object),  # not JSON at all
    st.text(alphabet="xyz!", min_size=40),
)


def attempt(fn: Callable[[], T]) -> T | InvalidInput:
    """``fn()``, or the ``InvalidInput`` it raised (any other exception fails the test)."""
    try:
        return fn()
    except InvalidInput as exc:
        return exc


def refused_here(exc: InvalidInput, field: str) -> bool:
    return exc.field is not None and (exc.field == field or exc.field.startswith(field + "."))


# ---- every kind's parameter model -----------------------------------------------------------------------------------


def test_every_kind_has_a_valid_strategy() -> None:
    assert set(VALID) == set(REGISTRY.names), "a new kind needs its valid parameters in VALID"


@pytest.mark.parametrize("kind", REGISTRY.names)
@PER_KIND
@given(data=st.data())
def test_valid_params_are_accepted_and_normalise_to_a_fixed_point(kind: str, data: st.DataObject) -> None:
    params = data.draw(VALID[kind])
    fault = REGISTRY.build(kind, params)
    assert isinstance(fault, Fault)
    shown = fault.describe_params()
    # what an answer shows is itself valid input, and means the same thing
    again = REGISTRY.build(kind, shown)
    assert again.describe_params() == shown
    for key in ("mode", "strength", "isolation"):
        if key in shown:
            assert shown[key] in (*LOCK_MODES, *ROW_STRENGTHS, *ISOLATION_LEVELS)


@pytest.mark.parametrize("kind", REGISTRY.names)
@PER_KIND
@given(data=st.data())
def test_anything_is_accepted_or_refused_naming_a_params_field(kind: str, data: st.DataObject) -> None:
    fields = list(REGISTRY.get(kind).params_model.model_fields)
    keys = st.sampled_from(fields) | any_text
    params: Any = data.draw(st.dictionaries(keys, json_values, max_size=5) | json_values)
    out = attempt(lambda: REGISTRY.build(kind, params))
    if isinstance(out, InvalidInput):
        assert refused_here(out, "params"), (out.field, out.message)
        out.message.encode()  # the message goes into a JSON answer: it must encode


@pytest.mark.parametrize("kind", REGISTRY.names)
@PER_KIND
@given(data=st.data())
def test_one_wrong_field_is_refused_naming_that_field(kind: str, data: st.DataObject) -> None:
    params = data.draw(VALID[kind])
    model = REGISTRY.get(kind).params_model
    field = data.draw(st.sampled_from(sorted(model.model_fields)))
    params[field] = data.draw(wrong_values)
    out = attempt(lambda: REGISTRY.build(kind, params))
    if isinstance(out, InvalidInput):
        assert refused_here(out, f"params.{field}"), (field, params[field], out.field, out.message)
    else:  # a text field may well take text; nothing else of these is valid anywhere
        assert isinstance(params[field], str), (field, params[field])


def text_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where the strings are in a JSON value (dict keys and list indexes)."""
    if isinstance(value, str):
        return [path]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    return [p for key, item in items for p in text_paths(item, (*path, key))]


@pytest.mark.parametrize("kind", REGISTRY.names)
@PER_KIND
@given(data=st.data(), bad=st.sampled_from(["\x00", "\udc80", "a\x00b", "\ud800x"]))
def test_text_postgresql_cannot_hold_is_refused_where_it_is(kind: str, data: st.DataObject, bad: str) -> None:
    params = data.draw(VALID[kind])
    with pytest.raises(InvalidInput) as err:
        REGISTRY.build(kind, {**params, bad: 1})  # as a key
    assert err.value.field == "params" and err.value.code == "invalid_text"
    paths = text_paths(params)
    if not paths:
        return
    *where, last = data.draw(st.sampled_from(paths))
    node: Any = params
    for step in where:
        node = node[step]
    node[last] += bad
    with pytest.raises(InvalidInput) as err:
        REGISTRY.build(kind, params)
    assert err.value.field == ".".join(["params", *map(str, where), str(last)]) and err.value.code == "invalid_text"
    err.value.message.encode()


@given(params=json_values.filter(lambda v: not isinstance(v, dict) and v is not None))
@FAST
def test_params_that_are_not_an_object_are_refused(params: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        REGISTRY.build("table-lock", params)
    assert err.value.field == "params"


@given(name=any_text)
@FAST
def test_an_unknown_kind_is_refused_naming_kind(name: str) -> None:
    assume(name not in REGISTRY.names)
    with pytest.raises(InvalidInput) as err:
        REGISTRY.build(name, {})
    assert err.value.field == "kind" and err.value.code == "unknown_kind"


# ---- lock modes, row-lock strengths, isolation levels ---------------------------------------------------------------


@given(mode=modes, strength=strengths, isolation=isolations)
@FAST
def test_every_spelling_names_the_same_thing(
    mode: tuple[str, str], strength: tuple[str, str], isolation: tuple[str, str]
) -> None:
    assert lock_mode(mode[1]) == mode[0]
    assert row_strength(strength[1]) == strength[0]
    assert isolation_level(isolation[1]) == isolation[0]


@given(text=any_text | st.sampled_from([*LOCK_MODES, *ROW_STRENGTHS, *ISOLATION_LEVELS]))
@FAST
def test_any_text_normalises_to_a_fixed_point_or_is_refused_naming_the_field(text: str) -> None:
    for parse, choices, field in (
        (lock_mode, LOCK_MODES, "params.mode"),
        (row_strength, ROW_STRENGTHS, "params.strength"),
        (isolation_level, ISOLATION_LEVELS, "params.isolation"),
    ):
        out = attempt(lambda: parse(text, field))  # noqa: B023 - called at once
        if isinstance(out, InvalidInput):
            assert out.field == field
        else:
            assert out in choices and parse(out, field) == out


# ---- identifiers ----------------------------------------------------------------------------------------------------


@given(parts=st.lists(name_part(), min_size=1, max_size=2))
@FAST
def test_quoted_names_come_back_exactly(parts: list[str]) -> None:
    assert parse_ident(".".join(quote(p) for p in parts), "params.table") == tuple(parts)


@given(name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_$]{0,40}", fullmatch=True))
@FAST
def test_unquoted_ascii_names_fold_to_lower_case(name: str) -> None:
    assert parse_ident(name, "params.table") == (name.lower(),)


@given(text=ident_text | any_text)
@settings(max_examples=300, deadline=None)
def test_any_text_is_a_name_or_refused_naming_the_field(text: str) -> None:
    parts = attempt(lambda: parse_ident(text, "params.tables.0"))
    if isinstance(parts, InvalidInput):
        assert parts.field == "params.tables.0"
        assert parts.code in ("invalid_identifier", "identifier_too_long")
    else:
        assert 1 <= len(parts) <= 2
        for p in parts:
            assert p and "\x00" not in p and len(p.encode()) <= MAX_IDENTIFIER_BYTES


@given(value=st.dictionaries(st.sampled_from(["name", "schema", "other"]), json_values, max_size=3) | json_values)
@FAST
def test_a_table_reference_is_parts_or_refused_naming_the_field(value: Any) -> None:
    parts = attempt(lambda: table_ref(value, "params.table"))
    if isinstance(parts, InvalidInput):
        assert refused_here(parts, "params.table"), (parts.field, parts.message)
    else:
        assert 1 <= len(parts) <= 2 and all(isinstance(p, str) and p for p in parts)


@given(table=any_text, schema=any_text)
@FAST
def test_version_table_names_are_exact_names_or_refused_naming_the_field(table: str, schema: str) -> None:
    params = VersionTableParams(version_table=table, version_table_schema=schema)
    out = attempt(lambda: version_table_name(params))
    if isinstance(out, InvalidInput):
        assert out.field in ("params.version_table", "params.version_table_schema")
    else:
        assert out == (schema, table)


@pytest.fixture
def pg_conn(pg: PgServer) -> Any:
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        yield conn


def test_names_split_as_postgresql_splits_them(pg_conn: psycopg.Connection[Any]) -> None:
    """Where dbchaos accepts a name, PostgreSQL's ``parse_ident`` gives the same parts (dbchaos
    may refuse more: spaces around dots, more than two parts, names over 63 bytes)."""

    @given(text=ident_text)
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    def agree(text: str) -> None:
        parsed = attempt(lambda: parse_ident(text, "params.table", max_parts=3))
        if isinstance(parsed, InvalidInput) and parsed.code == "identifier_too_long":
            return
        ours = None if isinstance(parsed, InvalidInput) else parsed
        theirs: list[str] | None
        if "\x00" in text:
            theirs = None  # PostgreSQL text cannot even carry it
        else:
            try:
                row = pg_conn.execute("SELECT parse_ident(%s)", (text,)).fetchone()
                theirs = row[0] if row else None
            except psycopg.errors.InvalidParameterValue:
                theirs = None
        if ours is not None:
            assert theirs == list(ours), (text, ours, theirs)
        if theirs is None:
            assert ours is None, (text, ours)

    agree()


# ---- durations and --param ------------------------------------------------------------------------------------------

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}


@given(number=st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False), unit=st.sampled_from(list(UNITS)))
@FAST
def test_durations_in_every_unit(number: Any, unit: str) -> None:
    text = f"{number}{unit}"
    assert math.isclose(parse_duration(text), float(number) * UNITS[unit], rel_tol=1e-9, abs_tol=1e-12)


@given(text=any_text | st.from_regex(r"\s*[0-9.e+-]{1,400}\s*(ms|s|m|h|d)?\s*", fullmatch=True))
@FAST
def test_any_text_is_a_duration_or_refused_naming_the_field(text: str) -> None:
    value = attempt(lambda: parse_duration(text, "duration"))
    if isinstance(value, InvalidInput):
        assert value.field == "duration"
    else:
        assert math.isfinite(value) and value >= 0


@given(
    pairs=st.lists(st.builds(lambda k, sep, v: k + sep + v, any_text, st.sampled_from(["=", "", "=="]), any_text)),
    params_json=st.none() | any_text | json_values.map(lambda v: __import__("json").dumps(v)),
)
@FAST
def test_any_param_flags_are_params_or_refused_naming_params(pairs: list[str], params_json: str | None) -> None:
    schema = REGISTRY.get("table-lock").params_model.model_json_schema()
    params = attempt(lambda: parse_params(pairs, params_json, schema))
    if isinstance(params, InvalidInput):
        assert params.field == "params"
    else:
        assert isinstance(params, dict)


@given(key=st.from_regex(r"[a-z_]{1,10}", fullmatch=True), values=st.lists(st.integers() | plain_name, min_size=1))
@FAST
def test_repeated_param_flags_make_a_list(key: str, values: list[Any]) -> None:
    schema = REGISTRY.get("table-lock").params_model.model_json_schema()
    params = parse_params([f"{key}={v}" for v in values], None, schema)
    assert params[key] == (values if len(values) > 1 else values[0])


# ---- the targets file and the tokens file ---------------------------------------------------------------------------

target_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
schema_names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
valid_target = st.fixed_dictionaries(
    {"dsn": st.builds(lambda h, d: f"postgresql://app@{h}:5432/{d}", plain_name, plain_name)},
    optional={
        "deny_schemas": st.lists(schema_names, max_size=3),
        "deny_tables": st.lists(st.builds(lambda s, t: f"{s}.{t}", schema_names, schema_names), max_size=3),
        "max_duration_s": st.floats(min_value=0.001, max_value=1e6),
        "max_faults": st.integers(1, 1000),
        "connection_reserve": st.integers(0, 1000),
    },
)
toml_values = st.recursive(
    st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(any_text, children, max_size=3),
    max_leaves=10,
)
target_keys = st.sampled_from(
    [
        "dsn",
        "dsn_env",
        "dsn_file",
        "default",
        "alembic_ini",
        "allow_schemas",
        "deny_schemas",
        "allow_tables",
        "deny_tables",
        "max_duration_s",
        "max_faults",
        "connection_reserve",
    ]
)


@given(targets=st.dictionaries(target_names, valid_target, min_size=1, max_size=3), pick=st.integers(0, 2))
@FAST
def test_a_valid_targets_file_gives_those_targets(targets: dict[str, dict[str, Any]], pick: int) -> None:
    default = sorted(targets)[pick % len(targets)]
    targets[default]["default"] = True
    out = parse_targets({"targets": targets}, Path("/etc/dbchaos/targets.toml"), {})
    assert isinstance(out, TargetsFile)
    assert set(out.targets) == set(targets) and out.default == default
    for name, body in targets.items():
        policy = out.targets[name].policy
        assert list(policy.deny_tables) == list(dict.fromkeys(body.get("deny_tables", [])))
        assert policy.max_faults == body.get("max_faults")


@given(
    data=st.dictionaries(
        st.sampled_from(["targets", "allow_ad_hoc_targets"]) | any_text,
        st.dictionaries(target_names | any_text, st.dictionaries(target_keys | any_text, toml_values, max_size=5))
        | toml_values,
        max_size=3,
    )
)
@FAST
def test_any_targets_file_is_targets_or_refused_naming_the_key(data: dict[str, Any]) -> None:
    environ = {"STAGING_DSN": "postgresql://app@db/staging"}
    out = attempt(lambda: parse_targets(data, Path("/etc/dbchaos/targets.toml"), environ))
    if isinstance(out, InvalidInput):  # the field names the key, even an empty one: targets.<name>.<key>
        assert out.code == "invalid_targets_file" and out.field is not None, (out.field, out.message)


@given(
    text=any_text
    | st.lists(
        st.sampled_from(
            ["[[token]]", 'name = "ci"', 'scope = "read"', "sha256 = ", '"' + "a" * 64 + '"', "\n", "x = 1"]
        )
    ).map("".join)
)
@FAST
def test_any_tokens_file_is_tokens_or_refused_naming_it(text: str) -> None:
    out = attempt(lambda: TokenStore.parse(text))
    if isinstance(out, InvalidInput):
        assert out.field == "tokens_file"


@given(scopes=st.lists(st.sampled_from(list(Scope)), min_size=1, max_size=4))
@FAST
def test_tokens_made_by_dbchaos_parse_back(scopes: list[Scope]) -> None:
    made = [generate_token(s, f"t{i}") for i, s in enumerate(scopes)]
    store = TokenStore.parse("".join(t.entry_toml() for t in made))
    for t in made:
        principal = store.authenticate(t.secret)
        assert principal is not None and principal.name == t.name and principal.scope is t.scope
    assert store.authenticate("dbc_" + "x" * 43) is None
    assert re.fullmatch(r"dbc_[A-Za-z0-9_-]{43}", made[0].secret)
