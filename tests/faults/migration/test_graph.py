"""The revision graph: walking back (merges, ``parent``, the base) and generated ids that
Alembic can never resolve to a real revision."""

from __future__ import annotations

import secrets
import string

import pytest

from dbchaos.errors import InvalidInput
from dbchaos.faults.migration.graph import RevisionGraph, generate_id, generate_unknown_id
from tests.alembic_helpers import BASE, BRANCH_A, BRANCH_B, HEAD, INVOICES, MERGE, PROJECT

HEX = set(string.hexdigits.lower())


def test_read_with_alembic_matches_the_project(graph: RevisionGraph) -> None:
    assert graph.revisions == {BASE, INVOICES, BRANCH_A, BRANCH_B, MERGE, HEAD}
    assert graph.parents[MERGE] == (BRANCH_A, BRANCH_B)
    assert graph.parents[BASE] == ()
    assert graph.heads == [HEAD]
    assert graph.ancestors(HEAD) == {BASE, INVOICES, BRANCH_A, BRANCH_B, MERGE}
    assert graph.ancestors(BRANCH_B) == {BASE, INVOICES}


def test_missing_ini_is_invalid_input() -> None:
    with pytest.raises(InvalidInput) as exc:
        RevisionGraph.from_alembic_ini(PROJECT / "nope.ini")
    assert exc.value.field == "alembic_ini"


@pytest.mark.parametrize(
    ("steps", "parent", "target", "path"),
    [
        (1, 0, MERGE, [HEAD, MERGE]),
        (2, 0, BRANCH_A, [HEAD, MERGE, BRANCH_A]),
        (2, 1, BRANCH_B, [HEAD, MERGE, BRANCH_B]),
        (3, 0, INVOICES, [HEAD, MERGE, BRANCH_A, INVOICES]),
        (3, 1, INVOICES, [HEAD, MERGE, BRANCH_B, INVOICES]),
        (4, 1, BASE, [HEAD, MERGE, BRANCH_B, INVOICES, BASE]),
        (1, 5, MERGE, [HEAD, MERGE]),  # 'parent' only matters at a merge
    ],
)
def test_step_back(graph: RevisionGraph, steps: int, parent: int, target: str, path: list[str]) -> None:
    assert graph.step_back(HEAD, steps, parent) == (target, path)


def test_step_back_beyond_the_base(graph: RevisionGraph) -> None:
    with pytest.raises(InvalidInput) as exc:
        graph.step_back(HEAD, 5)
    assert (exc.value.code, exc.value.field) == ("beyond_base", "params.steps")
    assert "after 4" in exc.value.message
    with pytest.raises(InvalidInput) as exc:
        graph.step_back(BASE, 1)
    assert exc.value.code == "beyond_base"


def test_step_back_with_a_parent_the_merge_does_not_have(graph: RevisionGraph) -> None:
    with pytest.raises(InvalidInput) as exc:
        graph.step_back(HEAD, 2, parent=2)
    assert exc.value.field == "params.parent"


def test_step_back_from_an_unknown_revision(graph: RevisionGraph) -> None:
    with pytest.raises(InvalidInput) as exc:
        graph.step_back("0123456789ab", 1)
    assert exc.value.field == "params.revision"


def test_latest_merge_below(graph: RevisionGraph) -> None:
    assert graph.latest_merge_below(HEAD) == MERGE
    assert graph.latest_merge_below(MERGE) == MERGE
    assert graph.latest_merge_below(BRANCH_A) is None


def test_prefix_clash(graph: RevisionGraph) -> None:
    assert graph.prefix_clash(HEAD)
    assert graph.prefix_clash(HEAD[:1])  # Alembic resolves a unique prefix, even one character
    assert graph.prefix_clash(HEAD + "0")
    assert not graph.prefix_clash("0" + HEAD[1:])


def test_generated_id_has_the_shape_of_the_apps_ids(graph: RevisionGraph) -> None:
    for _ in range(200):
        rev = generate_id(graph.revisions, graph)
        assert len(rev) == 12 and set(rev) <= HEX
        assert not graph.prefix_clash(rev)
    # ids that are not hex (date-named revisions): lower-case letters and digits, same length
    rev = generate_id(["20240101_accounts", "20240202_invoices"], None)
    assert len(rev) == len("20240101_accounts") and rev.isalnum() and rev.islower()
    assert len(generate_id([HEAD], None, length=2)) == 4  # clamped to 4..32
    assert len(generate_id([HEAD], None, length=99)) == 32
    assert len(generate_id([], None)) == 12


def test_generated_id_avoids_every_prefix_of_a_real_id(graph: RevisionGraph, monkeypatch: pytest.MonkeyPatch) -> None:
    # a short id that is a prefix of the head would resolve to the head: it is skipped
    drawn = iter("f6b8" + "0000")
    monkeypatch.setattr(secrets, "choice", lambda _alphabet: next(drawn))
    assert generate_id([HEAD], graph, length=4) == "0000"
    # the rows stored now count too, without any graph
    drawn = iter("abc1" + "0000")
    assert generate_id(["abc1def"], None, length=4) == "0000"
    monkeypatch.undo()
    # nor does it start with a real id (one-character ids): only 'f...' is left
    short = RevisionGraph({c: () for c in "0123456789abcde"})
    assert all(generate_id([HEAD], short).startswith("f") for _ in range(50))


def test_no_fresh_id_left_is_an_error_not_a_loop() -> None:
    full = RevisionGraph({c: () for c in "0123456789abcdef"})
    with pytest.raises(RuntimeError):
        generate_id(["0123"], full)


def test_unknown_id_without_scripts_is_not_hex(graph: RevisionGraph) -> None:
    rev = generate_unknown_id(None, [HEAD])
    assert rev.startswith("x") and len(rev) == 12  # no hex Alembic id can start with 'x'
    with_graph = generate_unknown_id(graph, [HEAD])
    assert with_graph not in graph and not graph.prefix_clash(with_graph)
