"""The HTML report in real headless Chromium (Debian's package): renders, no console errors."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbchaos.reports.html import render_html
from tests.reports.sample_journal import synthetic_journal

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("DBCHAOS_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


@pytest.fixture
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,1800"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_report_renders_offline_without_console_errors(browser: object, tmp_path: Path) -> None:
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.common.by import By

    assert isinstance(browser, WebDriver)
    page = tmp_path / "report.html"
    page.write_text(render_html(synthetic_journal()))
    browser.get(page.as_uri())
    assert browser.find_element(By.CSS_SELECTOR, "[data-verdict]").get_attribute("data-verdict") == "held"
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 3
    assert all(c.size["width"] > 300 and c.size["height"] > 50 for c in charts)
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart path"), "the latency line is drawn"
    logs: list[dict[str, str]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    errors = [e for e in logs if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "report.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
