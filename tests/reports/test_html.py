"""The HTML report: self-contained, and showing the figures the journal's raw data give."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from dbchaos.reports import figures
from dbchaos.reports.findings import fmt_ms
from dbchaos.reports.html import render_html
from dbchaos.reports.journal import journal_from_dict, load_journal
from tests.reports.sample_journal import synthetic_journal


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.scripts = 0
        self.rows: list[list[str]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for k, v in attrs:
            if k in ("src", "href") and v:
                self.srcs.append(v)
        if tag == "script":
            self.scripts += 1
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def test_report_is_self_contained_and_its_table_matches_the_figures() -> None:
    j = synthetic_journal()
    page = render_html(j)
    parsed = _Collector()
    parsed.feed(page)
    assert parsed.scripts == 0
    assert not [s for s in parsed.srcs if re.match(r"(https?:)?//", s)], "no external resources"
    row = next(r for r in parsed.rows if r[:2] == ["GET /items", "during"])
    s = figures.phase_stats(j, "during", "GET /items")
    assert row[2:6] == [str(s.count), str(s.errors), f"{s.error_rate * 100:.1f}%", str(s.timeouts)]  # type: ignore[operator]
    assert row[7] == fmt_ms(s.p95_ms)
    assert 'data-verdict="held"' in page  # no tolerances were evaluated
    assert "QueuePool limit" in page
    assert page.count("<svg") == 3  # latency, errors, blocked sessions


def test_hostile_strings_are_escaped() -> None:
    j = synthetic_journal()
    j.title = "<script>alert(1)</script>"
    j.probes[0].results[0].error = '"><img src=x onerror=alert(1)>'
    j.probes[0].results[0].ok = False
    page = render_html(j)
    assert "<script>alert" not in page
    assert "<img src=x" not in page


def test_journal_round_trips_through_json(tmp_path: Path) -> None:
    j = synthetic_journal()
    path = tmp_path / "run.json"
    j.save(path)
    again = load_journal(path)
    assert again == j
    assert render_html(again) == render_html(j)


def test_a_foreign_file_is_refused_clearly(tmp_path: Path) -> None:
    import pytest

    from dbchaos.errors import InvalidInput

    with pytest.raises(InvalidInput, match="not a dbchaos run journal"):
        journal_from_dict({"schema": "other"})
    bad = tmp_path / "x.json"
    bad.write_text("{nope")
    with pytest.raises(InvalidInput, match="line 1"):
        load_journal(bad)
