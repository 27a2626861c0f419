"""`dbchaos report RUN.json` re-renders the HTML report from a journal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dbchaos.reports.html import render_html
from tests.reports.sample_journal import synthetic_journal


def test_report_re_renders_the_same_html(tmp_path: Path) -> None:
    j = synthetic_journal()
    path = tmp_path / "run.json"
    j.save(path)
    res = subprocess.run([sys.executable, "-m", "dbchaos", "report", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "run.html").read_text() == render_html(j)
    assert "held" in res.stdout


def test_report_of_a_foreign_file_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"schema": "something-else"}')
    res = subprocess.run([sys.executable, "-m", "dbchaos", "report", str(path)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "not a dbchaos run journal" in res.stderr
    assert not (tmp_path / "x.html").exists()
