"""The guided game days over the lab's API, on a real ``dbchaos lab``: each injects its fault,
waits for the user's move, checks it against the live lab, and cleans up after itself.
(The browser test plays "the idle transaction" through the dashboard.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import wait_for
from tests.lab.lab_proc import LabProcess, dbchaos_lab, private_tmp

pytestmark = pytest.mark.drill  # two game days under live traffic: about a minute


@pytest.fixture(scope="module")
def lab() -> Iterator[LabProcess]:
    with private_tmp() as tmp, dbchaos_lab(tmp) as running:
        yield running


def _post(lab: LabProcess, path: str, body: Any = None) -> dict[str, Any]:
    res = lab.send("POST", path, body)
    assert res.status_code == 200, (path, res.status_code, res.text)
    answer: dict[str, Any] = res.json()
    return answer


def _current(lab: LabProcess) -> dict[str, Any]:
    current: dict[str, Any] = lab.get("/lab/api/gamedays/current")["current"]
    return current


def _step_is(lab: LabProcess, title: str) -> dict[str, Any] | None:
    run = _current(lab)
    return run if run["current"]["title"] == title else None


def _fault(lab: LabProcess, fault_id: str) -> dict[str, Any]:
    fault: dict[str, Any] = lab.get(f"/v1/faults/{fault_id}")
    return fault


def test_the_catalogue_has_three_game_days(lab: LabProcess) -> None:
    data = lab.get("/lab/api/gamedays")
    assert [g["id"] for g in data["gamedays"]] == ["idle-transaction", "deploy-never-finished", "one-read"]
    assert data["current"] is None
    for g in data["gamedays"]:
        kinds = [s["kind"] for s in g["steps"]]
        assert kinds[0] == "inject" and kinds[-1] == "done" and "act" in kinds


def test_the_deploy_that_never_finished(lab: LabProcess) -> None:
    run = _post(lab, "/lab/api/gamedays/deploy-never-finished/start")["current"]
    assert run["current"]["title"] == "Deploy" and run["fault_id"]
    assert _fault(lab, run["fault_id"])["state"] == "active"
    assert lab.get("/v1/targets/shop/migrations")["state"] == "unknown revision"
    # a second game day is refused while this one runs
    assert lab.send("POST", "/lab/api/gamedays/one-read/start").status_code == 409
    assert "press Deploy" in _current(lab)["status"]

    deploy = _post(lab, "/lab/api/deploy")
    assert not deploy["ok"] and "Can't locate revision" in deploy["output"] and not deploy["restarted"]
    wait_for(lambda: _step_is(lab, "Repair the version table"), 5, 0.2, what="the failed deploy to be seen")

    stamp = _post(lab, "/lab/api/alembic", {"command": "stamp"})
    assert stamp["ok"], stamp
    wait_for(lambda: _step_is(lab, "Deploy again"), 5, 0.2, what="the repair to be seen")

    deploy = _post(lab, "/lab/api/deploy")
    assert deploy["ok"] and deploy["restarted"], deploy
    done = wait_for(lambda: (r := _current(lab))["finished"] and r, 5, 0.2, what="the game day to finish")
    assert [s["state"] for s in done["steps"]] == ["done"] * 5
    assert any("Can't locate revision" in line for line in done["log"])
    # dbchaos found the team's repair at revert time and kept it
    fault = wait_for(lambda: (f := _fault(lab, run["fault_id"]))["state"] == "superseded" and f, 10, 0.2)
    assert fault["state"] == "superseded"
    assert lab.get("/v1/targets/shop/migrations")["state"] == "at head"
    assert _post(lab, "/lab/api/gamedays/current/abort")["aborted"]["finished"] is True
    assert lab.get("/lab/api/gamedays")["current"] is None


def test_one_read_took_the_site_down_then_hardened(lab: LabProcess) -> None:
    run = _post(lab, "/lab/api/gamedays/one-read/start")["current"]
    assert lab.get("/lab/api/config")["mode"] == "naive"
    assert _fault(lab, run["fault_id"])["kind"] == "migration-lock-queue"
    assert run["current"]["kind"] == "observe"
    _post(lab, "/lab/api/gamedays/current/continue")
    # an act step passes by its check only, never by "continue"
    assert lab.send("POST", "/lab/api/gamedays/current/continue").status_code == 409
    assert _current(lab)["current"]["title"] == "Switch the shop to hardened"
    assert "still naive" in _current(lab)["status"]

    switched = lab.send("PUT", "/lab/api/config", {"mode": "hardened"}, timeout=15)
    assert switched.status_code == 200, switched.text  # answers even while every worker thread waits
    done = wait_for(lambda: (r := _current(lab))["finished"] and r, 30, 0.5, what="p95 to come down while locked")
    assert "while the lock is still held" in done["log"][-1]
    # the game day reverted its fault when it finished
    assert _fault(lab, run["fault_id"])["state"] == "reverted"
    _post(lab, "/lab/api/gamedays/current/abort")
    assert lab.send("PUT", "/lab/api/config", {"mode": "naive"}).status_code == 200


def test_abort_reverts_the_game_days_fault(lab: LabProcess) -> None:
    run = _post(lab, "/lab/api/gamedays/idle-transaction/start")["current"]
    assert _fault(lab, run["fault_id"])["state"] == "active"
    aborted = _post(lab, "/lab/api/gamedays/current/abort")["aborted"]
    assert aborted["finished"] is False
    assert _fault(lab, run["fault_id"])["state"] == "reverted"
    assert lab.get("/lab/api/gamedays")["current"] is None
