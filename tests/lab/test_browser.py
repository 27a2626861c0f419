"""Acceptance 2: the dashboard in real headless Chromium (Debian's), against a real
``dbchaos lab``: start a table lock from the UI, see blocked sessions and the error rate
rise on the charts, stop it, see recovery; play a game day to its end. Screenshots go to
test-artifacts/lab/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.browser import artifacts_dir, chromium, click, console_errors, shot, skip_without_chromium, until
from tests.lab.lab_proc import LabProcess, dbchaos_lab, private_tmp

pytestmark = [pytest.mark.browser, skip_without_chromium()]
By = pytest.importorskip(
    "selenium.webdriver.common.by", reason="selenium is not installed (pip install -e '.[dev]')"
).By


@pytest.fixture(scope="module")
def lab() -> Iterator[LabProcess]:
    # a short pool timeout so the naive shop's QueuePool errors show within a short fault
    with private_tmp() as tmp, dbchaos_lab(tmp, "--pool-timeout", "3") as running:
        yield running


@pytest.fixture
def driver() -> Iterator[Any]:
    with chromium() as d:
        yield d


def live(driver: Any, key: str) -> str:
    return str(driver.find_element(By.ID, "live").get_attribute(f"data-{key}") or "")


def number(driver: Any, key: str) -> float:
    value = live(driver, key)
    return float(value) if value else 0.0


def test_a_table_lock_from_the_dashboard_shows_on_the_charts_and_recovers(lab: LabProcess, driver: Any) -> None:
    out = artifacts_dir("table-lock")
    driver.get(lab.dashboard)
    assert driver.title == "dbchaos lab"
    until(lambda: number(driver, "throughput") >= 5, 20, "traffic on the charts")
    until(lambda: driver.find_element(By.ID, "start-table-lock").is_displayed(), 10, "the scenario form")
    assert driver.find_element(By.ID, "f-table-lock-tables").get_attribute("value") == "items"
    assert driver.find_element(By.ID, "f-table-lock-mode").get_attribute("value") == "ACCESS EXCLUSIVE"
    shot(driver, out, "01-before", "live")

    duration = driver.find_element(By.ID, "f-table-lock-duration")
    duration.clear()
    duration.send_keys("20")
    driver.find_element(By.ID, "start-table-lock").click()
    until(lambda: "is active" in driver.find_element(By.ID, "result-table-lock").text, 15, "the fault to be active")

    # blocked sessions and the error rate rise on the charts (values the dashboard exposes)
    until(lambda: number(driver, "max-blocked10s") >= 5, 15, "blocked sessions on the chart")
    until(lambda: number(driver, "max-error-rate10s") > 0.5, 20, "the error rate to rise")
    assert int(live(driver, "active-faults")) == 1
    blocked_svg = driver.find_element(By.CSS_SELECTOR, "#chart-blocked svg")
    assert blocked_svg.find_elements(By.CSS_SELECTOR, "rect.fault"), "the fault window is marked"
    assert blocked_svg.find_elements(By.CSS_SELECTOR, "path.line.blocked")
    errors_text = driver.find_element(By.ID, "error-kinds").text
    assert "pool_timeout" in errors_text and "QueuePool limit" in errors_text
    shot(driver, out, "02-during", "live")
    until(lambda: driver.find_elements(By.CSS_SELECTOR, "#lock-tree li[data-depth='0']"), 10, "the lock tree")
    assert "dbchaos fault" in driver.find_element(By.ID, "lock-tree").text
    assert driver.find_elements(By.CSS_SELECTOR, "#blocked tbody tr td code.query")
    shot(driver, out, "03-lock-tree", "locks")

    # stop it from the UI and watch the shop recover
    click(driver, "#active-faults button[data-fault-id]")
    until(lambda: live(driver, "active-faults") == "0", 15, "the fault to end")
    until(
        lambda: (
            live(driver, "error-rate") == "0" and live(driver, "blocked") == "0" and number(driver, "throughput") >= 5
        ),
        20,
        "recovery: no errors, nothing blocked, answers flowing",
    )
    assert driver.find_element(By.CSS_SELECTOR, "#finished-faults tr[data-kind='table-lock'][data-state='reverted']")
    shot(driver, out, "04-recovered", "live")
    shot(driver, out, "05-faults", "faults")
    assert console_errors(driver) == []


def gameday(driver: Any, key: str) -> str:
    return str(driver.find_element(By.ID, "gamedays").get_attribute(f"data-{key}") or "")


def test_the_idle_transaction_game_day_played_to_its_end(lab: LabProcess, driver: Any) -> None:
    out = artifacts_dir("gameday-idle-transaction")
    driver.get(lab.dashboard)
    until(lambda: number(driver, "throughput") >= 5, 20, "traffic on the charts")
    click(driver, "#gameday-start-idle-transaction")
    until(lambda: gameday(driver, "step-kind") == "observe", 15, "the game day to inject and ask to observe")
    assert gameday(driver, "current") == "idle-transaction"
    until(lambda: number(driver, "max-blocked10s") >= 1, 15, "orders blocked on the locked rows")
    shot(driver, out, "01-observe", "gamedays")
    shot(driver, out, "02-charts", "live")
    click(driver, "#gameday-continue")
    until(lambda: gameday(driver, "step-kind") == "act", 10, "the step that asks to act")
    assert "End session on the root" in driver.find_element(By.ID, "gameday-current").text

    # the user's move: find the root of the lock tree (the idle transaction) and end it
    root = until(
        lambda: driver.find_elements(By.CSS_SELECTOR, "#lock-tree li[data-depth='0']"), 15, "the lock tree's root"
    )[0]
    assert "idle in transaction" in root.text and "dbchaos fault" in root.text
    shot(driver, out, "03-lock-tree", "locks")
    click(driver, "#lock-tree li[data-depth='0'] button[data-terminate]")

    until(lambda: gameday(driver, "finished") == "true", 20, "the game day's check to pass")
    log = driver.find_element(By.ID, "gameday-current").text
    assert "no session waits on a lock" in log
    until(lambda: live(driver, "blocked") == "0" and number(driver, "throughput") >= 5, 20, "the shop to recover")
    shot(driver, out, "04-done", "gamedays")
    finished = driver.find_element(By.CSS_SELECTOR, "#finished-faults tbody tr")
    assert "row-lock" in finished.text and "lost" in finished.text
    click(driver, "#gameday-abort")  # "Close"
    until(lambda: gameday(driver, "current") == "", 10, "the game day to be closed")
    assert console_errors(driver) == []


def test_every_scenario_form_sends_its_defaults_and_one_starts_from_its_form(lab: LabProcess, driver: Any) -> None:
    """Acceptance 4 from the dashboard's side: the forms built from the kinds' schemas send
    the catalogue's defaults (test_scenarios.py starts and reverts each of those on a shop)."""
    driver.get(lab.dashboard)
    until(lambda: driver.find_elements(By.CSS_SELECTOR, "form.fault-form"), 15, "the scenario forms")
    schemas = {k["kind"]: k["params_schema"].get("properties", {}) for k in lab.get("/v1/kinds")["kinds"]}
    scenarios = [sc for g in lab.get("/lab/api/scenarios")["groups"] for sc in g["scenarios"]]
    assert len(scenarios) == len(schemas)
    for sc in scenarios:
        sent = driver.execute_script("return document.getElementById(arguments[0]).readParams()", f"form-{sc['kind']}")
        defaults = {k: p["default"] for k, p in schemas[sc["kind"]].items() if p.get("default") not in (None, [])}
        assert sent == defaults | sc["params"], sc["kind"]

    # advisory-lock's keys are edited as JSON: start it from its form, stop it from the faults panel
    click(driver, "#scenario-advisory-lock details.start summary")
    duration = driver.find_element(By.ID, "f-advisory-lock-duration")
    duration.clear()
    duration.send_keys("30")
    click(driver, "#start-advisory-lock")
    until(lambda: "is active" in driver.find_element(By.ID, "result-advisory-lock").text, 15, "advisory-lock active")
    click(driver, "#active-faults li[data-kind='advisory-lock'] button[data-fault-id]")
    until(
        lambda: driver.find_elements(
            By.CSS_SELECTOR, "#finished-faults tr[data-kind='advisory-lock'][data-state='reverted']"
        ),
        15,
        "advisory-lock reverted",
    )
    assert console_errors(driver) == []
