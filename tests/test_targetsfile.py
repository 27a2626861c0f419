"""The targets file: parsing and validation, and its policies enforced by the engine and
the API on real PostgreSQL (named targets, denied and allowed tables, maximum duration,
per-target cap, connection reserve, compat ad-hoc targets and durations)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import conninfo

from dbchaos.api.app import create_app
from dbchaos.api.context import AppContext
from dbchaos.engine.engine import Engine, FaultRequest
from dbchaos.errors import CapacityReached, Conflict, Forbidden, InvalidInput
from dbchaos.faults.registry import default_registry
from dbchaos.settings import Settings
from dbchaos.targets import Target, TargetPolicy
from dbchaos.targetsfile import TargetsFile, load_targets_file, parse_targets
from tests.alembic_helpers import INI
from tests.helpers import query, relation_locks, wait_for
from tests.pg import PgServer, fresh_database

BASE = "http://127.0.0.1:8080"
SECRET = "S3cret-Pw-never-shown"
DSN = f"postgresql://app:{SECRET}@db.internal:5432/staging"


def fault_sessions(dsn: str) -> list[tuple[Any, ...]]:
    """dbchaos's fault sessions (``dbchaos:<uuid>``) connected to this very database."""
    return query(
        dsn,
        "SELECT pid, application_name FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name ~ '^dbchaos:[0-9a-f-]{36}$'",
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(text)
    return path


# ---- parsing -------------------------------------------------------------------------


def test_a_good_file_with_every_key(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "ci.dsn").write_text(f"host=ci.internal dbname=ci user=ci password={SECRET}\n")
    path = write(
        tmp_path,
        f"""
allow_ad_hoc_targets = true

[targets.staging]
dsn_env = "STAGING_DSN"
default = true
alembic_ini = "{INI}"
allow_schemas = ["public", "app"]
deny_schemas = ["audit"]
allow_tables = ["billing.invoices"]
deny_tables = ["public.payments", "public.Users"]
max_duration_s = 300
max_faults = 5
connection_reserve = 10

[targets.ci]
dsn_file = "secrets/ci.dsn"
max_duration_s = 2.5

[targets.lab]
dsn = "{DSN}"
""",
    )
    found = load_targets_file(path, {"STAGING_DSN": DSN})
    assert found.default == "staging"
    assert found.allow_ad_hoc_targets is True
    assert set(found.targets) == {"staging", "ci", "lab"}
    staging = found.targets["staging"]
    assert staging.dsn == DSN
    assert staging.policy == TargetPolicy(
        allow_schemas=("public", "app"),
        deny_schemas=("audit",),
        allow_tables=("billing.invoices",),
        deny_tables=("public.payments", "public.Users"),
        max_duration_s=300.0,
        max_faults=5,
        connection_reserve=10,
    )
    assert found.targets["ci"].dsn == f"host=ci.internal dbname=ci user=ci password={SECRET}"  # relative to the file
    assert found.targets["ci"].policy.max_duration_s == 2.5
    assert found.targets["lab"].policy == TargetPolicy()
    assert found.alembic_inis == {"staging": INI}
    assert "f6b8da4c5006" in found.load_graphs()["staging"].heads
    for shown in (repr(found), str(found), repr(staging), str(found.targets["ci"]), staging.masked_dsn):
        assert SECRET not in shown


def test_one_target_is_the_default_without_saying_so(tmp_path: Path) -> None:
    found = load_targets_file(write(tmp_path, f'[targets.only]\ndsn = "{DSN}"\n'), {})
    assert found.default == "only"
    assert found.allow_ad_hoc_targets is False


BAD: list[tuple[str, str, str]] = [
    ('[targets.a]\ndsn = "x"\nsurprise = 1\n', "targets.a.surprise", "not a known key"),
    (f'oops = 1\n[targets.a]\ndsn = "{DSN}"\n', "oops", "unknown top-level key"),
    (f'allow_ad_hoc_targets = "yes"\n[targets.a]\ndsn = "{DSN}"\n', "allow_ad_hoc_targets", "true or false"),
    ("allow_ad_hoc_targets = true\n", "targets", "no targets"),
    ("[targets.a]\nmax_faults = 1\n", "targets.a.dsn", "exactly one of dsn, dsn_env or dsn_file"),
    (f'[targets.a]\ndsn = "{DSN}"\ndsn_env = "X"\n', "targets.a.dsn", "found dsn, dsn_env"),
    ('[targets.a]\ndsn = ""\n', "targets.a.dsn", "non-empty string"),
    ("[targets.a]\ndsn = 5\n", "targets.a.dsn", "non-empty string"),
    (f'[targets.a]\ndsn = "postgresql://app:{SECRET}@h/x?foo=bar"\n', "targets.a.dsn", "does not give"),
    ('[targets.a]\ndsn_env = "UNSET_VAR_FOR_TEST"\n', "targets.a.dsn_env", "not set or empty"),
    (f'[targets.a]\ndsn_env = "{DSN}"\n', "targets.a.dsn_env", "name of an environment variable"),
    ('[targets.a]\ndsn_file = "no/such/file"\n', "targets.a.dsn_file", "cannot be read"),
    (f'[targets.a]\ndsn = "{DSN}"\ndefault = "yes"\n', "targets.a.default", "true or false"),
    (f'[targets.a]\ndsn = "{DSN}"\nalembic_ini = "missing.ini"\n', "targets.a.alembic_ini", "is not a file"),
    (f'[targets.a]\ndsn = "{DSN}"\nallow_schemas = "public"\n', "targets.a.allow_schemas", "list of schema"),
    (f'[targets.a]\ndsn = "{DSN}"\ndeny_schemas = [""]\n', "targets.a.deny_schemas", "not a schema name"),
    (f'[targets.a]\ndsn = "{DSN}"\ndeny_tables = ["items"]\n', "targets.a.deny_tables", "schema.table"),
    (f'[targets.a]\ndsn = "{DSN}"\nallow_tables = ["public."]\n', "targets.a.allow_tables", "schema.table"),
    (f'[targets.a]\ndsn = "{DSN}"\nallow_tables = ["public.{"x" * 64}"]\n', "targets.a.allow_tables", "1-63 bytes"),
    (f'[targets.a]\ndsn = "{DSN}"\nmax_duration_s = 0\n', "targets.a.max_duration_s", "positive number"),
    (f'[targets.a]\ndsn = "{DSN}"\nmax_duration_s = nan\n', "targets.a.max_duration_s", "positive number"),
    (f'[targets.a]\ndsn = "{DSN}"\nmax_duration_s = true\n', "targets.a.max_duration_s", "positive number"),
    (f'[targets.a]\ndsn = "{DSN}"\nmax_faults = 0\n', "targets.a.max_faults", "at least 1"),
    (f'[targets.a]\ndsn = "{DSN}"\nmax_faults = 2.5\n', "targets.a.max_faults", "whole number"),
    (f'[targets.a]\ndsn = "{DSN}"\nconnection_reserve = -1\n', "targets.a.connection_reserve", "at least 0"),
    (f'[targets."bad name"]\ndsn = "{DSN}"\n', "targets.bad name", "must be 1-63 letters"),
    ('[targets]\na = "x"\n', "targets.a", "must be a table"),
    (f'[targets.a]\ndsn = "{DSN}"\n[targets.b]\ndsn = "{DSN}"\n', "targets", "none says default"),
    (
        f'[targets.a]\ndsn = "{DSN}"\ndefault = true\n[targets.b]\ndsn = "{DSN}"\ndefault = true\n',
        "targets",
        "both say default",
    ),
    ('[targets.a]\ndsn = "unterminated\n', "targets_file", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "field", "says"), BAD, ids=[f"{b[1]}:{b[2]}" for b in BAD])
def test_each_bad_key_or_value_is_an_error_naming_it(tmp_path: Path, text: str, field: str, says: str) -> None:
    with pytest.raises(InvalidInput) as info:
        load_targets_file(write(tmp_path, text), {})
    err = info.value
    assert err.code == "invalid_targets_file"
    assert err.field == field
    assert says in err.message
    assert str(tmp_path / "targets.toml") in err.message
    parts = field.split(".")
    if len(parts) >= 2 and parts[0] == "targets":  # the target's name, and the key where there is one
        assert repr(parts[1]) in err.message or f"'{parts[1]}'" in err.message
    if len(parts) == 3:
        assert parts[2] in err.message
    assert SECRET not in err.message


def test_an_unreadable_file_and_a_dsn_from_an_empty_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read it"):
        load_targets_file(tmp_path / "absent.toml")
    (tmp_path / "empty.dsn").write_text("\n")
    with pytest.raises(InvalidInput, match="is empty") as info:
        load_targets_file(write(tmp_path, '[targets.a]\ndsn_file = "empty.dsn"\n'))
    assert info.value.field == "targets.a.dsn_file"


@pytest.mark.parametrize(
    ("policy", "obj", "refused"),
    [
        (TargetPolicy(deny_tables=("public.items",)), "public.items", True),
        (TargetPolicy(deny_tables=("public.items",)), "table:public.items", True),
        (TargetPolicy(deny_tables=("public.items",)), "public.Items", False),  # exact, case-sensitive
        (TargetPolicy(deny_tables=("public.alembic_version",)), "version_table:public.alembic_version", True),
        (TargetPolicy(deny_schemas=("public",)), "index:public.orders_user_id_idx", True),
        (TargetPolicy(deny_schemas=("pub",)), "public.items", False),
        (TargetPolicy(allow_tables=("public.items",)), "public.users", True),
        (TargetPolicy(allow_tables=("public.items",)), "public.items", False),
        (TargetPolicy(allow_schemas=("app",)), "public.items", True),
        (TargetPolicy(allow_schemas=("app",), allow_tables=("public.items",)), "public.items", False),
        (TargetPolicy(allow_schemas=("public",), deny_tables=("public.items",)), "public.items", True),  # deny wins
        (TargetPolicy(allow_schemas=("app",)), "index:public.i", True),
        (TargetPolicy(allow_tables=("public.items",)), "index:public.i", False),  # its table is checked
    ],
)
def test_policy_refusals(policy: TargetPolicy, obj: str, refused: bool) -> None:
    assert (policy.refusal(obj) is not None) is refused


# ---- enforcement on real PostgreSQL ---------------------------------------------------


def policy_targets(dsn: str, **policy: Any) -> dict[str, Target]:
    return {"default": Target("default", dsn, TargetPolicy(**policy))}


@contextlib.asynccontextmanager
async def engine(targets: dict[str, Target], settings: Settings | None = None) -> Any:
    eng = Engine(settings or Settings(), targets, default_registry())
    try:
        yield eng
    finally:
        await eng.close()


def test_a_denied_table_is_refused_with_403_and_nothing_is_held(db: str) -> None:
    async def scenario() -> None:
        async with engine(policy_targets(db, deny_tables=("public.items",))) as eng:
            with pytest.raises(Forbidden) as info:
                await eng.create(FaultRequest("table-lock", {"tables": ["users", "items"]}, duration_s=2))
            assert info.value.code == "denied_object"
            assert "public.items" in info.value.message and "deny_tables" in info.value.message
            assert info.value.extra["object"] == "public.items"
            others: list[tuple[str, dict[str, Any]]] = [
                ("row-lock", {"table": "items"}),
                ("idle-transaction", {"tables": ["items"]}),
                ("migration-lock-queue", {"table": "items"}),
            ]
            for kind, params in others:
                with pytest.raises(Forbidden, match=r"public\.items"):
                    await eng.create(FaultRequest(kind, params, duration_s=2))
            assert eng.all() == []
            assert relation_locks(db, "items") == []
            assert fault_sessions(db) == []
            ok = await eng.create(FaultRequest("table-lock", {"tables": ["users"]}, duration_s=2))
            assert ok.state.value == "active"
            await eng.abort(ok.id)

    asyncio.run(scenario())


def test_allowed_lists_and_denied_schemas(db: str) -> None:
    async def scenario() -> None:
        async with engine(policy_targets(db, allow_tables=("public.items",))) as eng:
            with pytest.raises(Forbidden, match="allow_tables") as info:
                await eng.create(FaultRequest("row-lock", {"table": "users"}, duration_s=2))
            assert info.value.code == "denied_object"
            rec = await eng.create(FaultRequest("row-lock", {"table": "items", "limit": 1}, duration_s=2))
            assert rec.state.value == "active"
            await eng.abort(rec.id)
        async with engine(policy_targets(db, deny_schemas=("public",))) as eng:
            with pytest.raises(Forbidden, match="deny_schemas"):
                await eng.create(FaultRequest("table-lock", {"tables": ["orders"]}, duration_s=2))
            # kinds that name no table are not affected by table lists
            rec = await eng.create(FaultRequest("advisory-lock", {"keys": [77]}, duration_s=2))
            assert rec.state.value == "active"
            await eng.abort(rec.id)
        assert relation_locks(db, "users") == []

    asyncio.run(scenario())


def test_a_denied_version_table_refuses_migration_faults(alembic_db: str) -> None:
    async def scenario() -> None:
        async with engine(policy_targets(alembic_db, deny_tables=("public.alembic_version",))) as eng:
            with pytest.raises(Forbidden, match="alembic_version") as info:
                await eng.create(FaultRequest("missing-version", {}, duration_s=2))
            assert info.value.code == "denied_object"
            assert eng.all() == []

    asyncio.run(scenario())
    assert query(alembic_db, "SELECT count(*) FROM alembic_version")[0][0] == 1


def test_max_duration_and_max_faults_per_target(db: str) -> None:
    async def scenario() -> None:
        async with engine(policy_targets(db, max_duration_s=3, max_faults=2)) as eng:
            with pytest.raises(InvalidInput) as info:
                await eng.create(FaultRequest("advisory-lock", {"keys": [1]}, duration_s=3.5))
            assert info.value.code == "duration_too_long"
            assert "maximum of 3 s" in info.value.message and "'default'" in info.value.message
            first = await eng.create(FaultRequest("advisory-lock", {"keys": [1]}))  # no duration: the target's max
            assert first.duration_s == 3
            await eng.create(FaultRequest("advisory-lock", {"keys": [2]}, duration_s=3))
            with pytest.raises(CapacityReached, match="2 faults running"):
                await eng.create(FaultRequest("advisory-lock", {"keys": [3]}, duration_s=3))
            await eng.reset()

    asyncio.run(scenario())


def test_connection_reserve_is_a_floor_under_leave(db: str) -> None:
    async def scenario() -> None:
        async with engine(policy_targets(db, connection_reserve=100_000)) as eng:
            with pytest.raises(Conflict, match="connection_reserve of 100000") as info:
                await eng.create(FaultRequest("connection-exhaustion", {"connections": 1}, duration_s=2))
            assert info.value.code == "not_enough_connection_slots"
            with pytest.raises(Conflict, match="leaving 100000 free"):
                await eng.create(FaultRequest("connection-exhaustion", {"leave": 0}, duration_s=2))
            assert eng.all() == []

    asyncio.run(scenario())
    assert fault_sessions(db) == []


# ---- named targets over HTTP, compat ---------------------------------------------------


@pytest.fixture
def second_db(pg: PgServer) -> Iterator[str]:
    with fresh_database(pg) as dsn:
        yield dsn


def file_for(tmp_path: Path, text: str, env: dict[str, str]) -> TargetsFile:
    return load_targets_file(write(tmp_path, text), env)


@contextlib.contextmanager
def serve(found: TargetsFile, settings: Settings | None = None) -> Iterator[tuple[TestClient, AppContext]]:
    base = replace(settings or Settings(), target_name=found.default, allow_ad_hoc_targets=found.allow_ad_hoc_targets)
    app = create_app(base, found.targets, graphs=found.load_graphs())
    with TestClient(app, base_url=BASE) as client:
        ctx = app.state.ctx
        assert isinstance(ctx, AppContext)
        yield client, ctx


TWO = """
allow_ad_hoc_targets = {ad_hoc}

[targets.main]
dsn_env = "MAIN_DSN"
default = true
max_duration_s = 5

[targets.second]
dsn_env = "SECOND_DSN"
deny_tables = ["public.users"]
"""


def test_a_request_to_a_non_default_target_by_name(tmp_path: Path, db: str, second_db: str) -> None:
    found = file_for(tmp_path, TWO.format(ad_hoc="false"), {"MAIN_DSN": db, "SECOND_DSN": second_db})
    with serve(found) as (client, _):
        body = {"kind": "table-lock", "params": {"tables": ["items"]}, "duration_s": 10, "target": "second"}
        resp = client.post("/v1/faults", json=body)
        assert resp.status_code == 201, resp.text
        fault = resp.json()
        assert fault["target"] == "second"
        assert relation_locks(second_db, "items") and relation_locks(db, "items") == []
        # main's maximum does not apply to second; second's deny list does not apply to main
        denied = client.post("/v1/faults", json={**body, "params": {"tables": ["users"]}})
        assert denied.status_code == 403 and denied.json()["code"] == "denied_object"
        too_long = client.post("/v1/faults", json={**body, "target": None})
        assert too_long.status_code == 422
        assert too_long.json()["code"] == "duration_too_long" and "maximum of 5 s" in too_long.json()["detail"]
        ok = client.post("/v1/faults", json={**body, "target": None, "params": {"tables": ["users"]}, "duration_s": 5})
        assert ok.status_code == 201 and ok.json()["target"] == "main"
        unknown = client.post("/v1/faults", json={**body, "target": "nope"})
        assert unknown.status_code == 422 and unknown.json()["field"] == "target"
        assert client.delete(f"/v1/faults/{fault['id']}").json()["state"] == "reverted"
    assert relation_locks(second_db, "items") == []


COMPAT = "/api/v1/break/long_transactions"


def test_compat_target_url_needs_allow_ad_hoc_targets(tmp_path: Path, db: str, second_db: str) -> None:
    url = second_db
    refused = file_for(tmp_path, TWO.format(ad_hoc="false"), {"MAIN_DSN": db, "SECOND_DSN": db})
    with serve(refused) as (client, ctx):
        resp = client.post(COMPAT, params={"target_database_url": url, "duration_seconds": 5})
        assert resp.status_code == 403, resp.text
        assert resp.json()["code"] == "ad_hoc_target_refused"
        assert ctx.engine.all() == []
        # a configured target's URL is fine (here the default's)
        same = client.post(COMPAT, params={"target_database_url": db, "duration_seconds": 3})
        assert same.status_code == 200, same.text
        assert ctx.engine.get(same.json()["attack_id"]).target == "main"
        client.post(f"{COMPAT}/{same.json()['attack_id']}/stop")
    allowed = file_for(tmp_path, TWO.format(ad_hoc="true"), {"MAIN_DSN": db, "SECOND_DSN": db})
    with serve(allowed) as (client, ctx):
        resp = client.post(COMPAT, params={"target_database_url": url, "duration_seconds": 20})
        assert resp.status_code == 200, resp.text
        attack = resp.json()["attack_id"]
        rec = ctx.engine.get(attack)
        assert rec.target.startswith("adhoc-")
        assert url not in resp.text
        deadline_check = client.get(f"{COMPAT}/{attack}")
        assert url not in deadline_check.text
        wait_for(lambda: relation_locks(second_db, "items"), 10.0, what="the ad-hoc target's lock")
        assert client.post(f"{COMPAT}/{attack}/stop").json()["status"] == "rolled_back"
        # an ad-hoc database must have opted in like any other
        with psycopg.connect(second_db, autocommit=True) as conn:
            conn.execute("DROP TABLE dbchaos.opt_in")
        other = conninfo.make_conninfo(second_db, application_name="another-spelling")
        resp = client.post(COMPAT, params={"target_database_url": other, "duration_seconds": 5})
        assert resp.status_code == 403 and resp.json()["code"] == "target_not_opted_in"
        assert "dbchaos init --target" in resp.json()["detail"]
    assert relation_locks(second_db, "items") == []


def test_compat_duration_above_the_target_maximum_is_422_naming_it(tmp_path: Path, db: str) -> None:
    found = file_for(tmp_path, TWO.format(ad_hoc="false"), {"MAIN_DSN": db, "SECOND_DSN": db})
    with serve(found) as (client, ctx):
        resp = client.post(COMPAT, params={"duration_seconds": 6})
        assert resp.status_code == 422, resp.text
        body = resp.json()
        assert body["code"] == "duration_too_long"
        assert body["field"] == "duration_seconds"
        assert "maximum of 5 s" in body["detail"] and "'main'" in body["detail"]
        assert ctx.engine.all() == []
        # absent: "until stopped", bounded by the target's maximum
        started = client.post(COMPAT, params={"lock_type": "advisory_lock", "lock_count": 1})
        assert started.status_code == 200, started.text
        assert ctx.engine.get(started.json()["attack_id"]).duration_s == 5
        client.post(f"{COMPAT}/{started.json()['attack_id']}/stop")


def test_parse_targets_from_a_mapping() -> None:
    found = parse_targets({"targets": {"x": {"dsn": DSN, "max_faults": 3}}}, Path("/etc/dbchaos/targets.toml"), {})
    assert found.targets["x"].policy.max_faults == 3
    assert found.default == "x"
