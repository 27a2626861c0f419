"""The self-contained HTML report: one file, inline CSS and SVG, no script, no network."""

from __future__ import annotations

import time
from html import escape
from typing import Any

import dbchaos
from dbchaos.reports import figures
from dbchaos.reports.findings import all_findings, fmt_ms, fmt_s
from dbchaos.reports.journal import RunJournal
from dbchaos.reports.svg import Series, Window, chart

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:820px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.meta{color:#5a6272;font-size:13px}
.verdict{display:inline-block;padding:3px 10px;border-radius:12px;font-weight:600;color:#fff}
.held{background:#1f8a4c}.deviated{background:#c0392b}.halted{background:#b9770e}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #dde1e7;padding:4px 7px;text-align:left;vertical-align:top}
th{background:#eef0f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1f8a4c;font-weight:600}.bad{color:#c0392b;font-weight:600}
ul.findings li{margin:4px 0}
.chart{width:100%;height:auto;background:#fff;border:1px solid #dde1e7;margin:6px 0}
.chart .ct{font-size:13px;font-weight:600;fill:#1d2330}.chart .yl{font-size:10px;fill:#5a6272;text-anchor:end}
.chart .xl{font-size:10px;fill:#5a6272;text-anchor:middle}.chart .lg{font-size:11px;fill:#1d2330}
.chart .grid{stroke:#eceef2}.chart .win{fill:#f5b041;opacity:.22}
ul.tree,ul.tree ul{list-style:none;padding-left:18px;margin:0}ul.tree li{margin:3px 0}
code{font:12px ui-monospace,Menlo,monospace;background:#eef0f4;padding:1px 4px;border-radius:3px}
"""

_COLORS = ("#2e6fd8", "#8e44ad", "#16a085", "#d35400", "#7f8c8d")


def _windows(journal: RunJournal) -> list[Window]:
    out = []
    for f in journal.faults:
        if f.start_t is not None:
            end = f.end_t if f.end_t is not None else f.start_t + f.duration_s
            out.append(Window(f.start_t, end, f"{f.name} ({f.kind})"))
    return out


def _tree(nodes: list[dict[str, Any]]) -> str:
    if not nodes:
        return ""
    items = []
    for n in nodes:
        label = f"pid {n.get('pid')} · {escape(str(n.get('application_name') or '?'))} · {escape(str(n.get('state')))}"
        q = n.get("query")
        if q:
            label += f" · <code>{escape(str(q)[:160])}</code>"
        items.append(f"<li>{label}{_tree(list(n.get('waits') or []))}</li>")
    return f"<ul class=tree>{''.join(items)}</ul>"


def _stats_rows(journal: RunJournal) -> str:
    rows = []
    for name in figures.probe_names(journal):
        for ph in ("baseline", "during", "after"):
            s = figures.phase_stats(journal, ph, name)
            rate = f"{s.error_rate * 100:.1f}%" if s.error_rate is not None else "n/a"
            rows.append(
                f"<tr><td>{escape(name)}</td><td>{ph}</td><td class=n>{s.count}</td><td class=n>{s.errors}</td>"
                f"<td class=n>{rate}</td><td class=n>{s.timeouts}</td><td class=n>{fmt_ms(s.p50_ms)}</td>"
                f"<td class=n>{fmt_ms(s.p95_ms)}</td><td class=n>{fmt_ms(s.p99_ms)}</td>"
                f"<td class=n>{fmt_ms(s.max_ms)}</td></tr>"
            )
    return "".join(rows)


def render_html(journal: RunJournal) -> str:
    """The report for ``journal``; every figure comes from :mod:`dbchaos.reports.figures`."""
    run_len = max(journal.duration_s, max((r.t for p in journal.probes for r in p.results), default=0.0), 1.0)
    windows = _windows(journal)
    verdict = journal.verdict
    charts = []
    for i, probe in enumerate(journal.probes):
        buckets = figures.timeline(probe.results, run_len)
        color = _COLORS[i % len(_COLORS)]
        charts.append(
            chart(
                f"{probe.name}: p95 latency per second",
                [Series("p95", [(b.t, b.p95_ms) for b in buckets], color)],
                run_len,
                windows,
                y_fmt=fmt_ms,
                y_min_max=10.0,
            )
        )
        charts.append(
            chart(
                f"{probe.name}: error rate per second",
                [Series("errors", [(b.t, (b.error_rate or 0) * 100) for b in buckets], "#c0392b", bars=True)],
                run_len,
                windows,
                y_fmt=lambda v: f"{v:.0f}%",
                y_min_max=10.0,
            )
        )
    if journal.samples:
        charts.append(
            chart(
                "Sessions blocked (PostgreSQL)",
                [
                    Series("blocked", [(s.t, float(s.blocked)) for s in journal.samples], "#d35400"),
                    Series("idle in tx", [(s.t, float(s.idle_in_transaction)) for s in journal.samples], "#7f8c8d"),
                ],
                run_len,
                windows,
                y_fmt=lambda v: f"{v:.0f}",
            )
        )
    tol_rows = "".join(
        f"<tr><td><code>{escape(t.text)}</code></td><td>{escape(t.phase)}</td>"
        f"<td>{escape(t.probe or 'all probes')}</td>"
        f"<td class=n>{'n/a' if t.observed is None else escape(f'{t.observed:g} {t.unit}')}</td>"
        f"<td class={'ok' if t.held else 'bad'}>{'held' if t.held else 'deviated'}</td>"
        f"<td>{escape(t.detail)}</td></tr>"
        for t in journal.tolerances
    )
    fault_rows = "".join(
        f"<tr><td>{escape(f.name)}</td><td>{escape(f.kind)}</td><td class=n>{f.at_s:g}s</td>"
        f"<td class=n>{f.duration_s:g}s</td>"
        f"<td class=n>{'' if f.start_t is None else f'{f.start_t:.2f}s'}</td>"
        f"<td class=n>{'' if f.end_t is None else f'{f.end_t:.2f}s'}</td>"
        f"<td>{escape(str(f.state))} {escape(f.end_reason or '')}</td><td class=n>{f.max_blocked}</td></tr>"
        for f in journal.faults
    )
    worst = figures.worst_sample(journal.samples)
    worst_html = (
        f"<p>At {fmt_s(worst.t)} into the run, {worst.blocked} sessions were blocked:</p>{_tree(worst.lock_tree)}"
        if worst
        else "<p>No session was blocked at any sample.</p>"
    )
    findings = journal.findings or all_findings(journal)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(journal.started_at))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{escape(journal.title)} — dbchaos report</title><style>{_CSS}</style></head>
<body><main>
<h1>{escape(journal.title)} <span class="verdict {verdict}" data-verdict="{verdict}">{verdict}</span></h1>
<div class=meta>target <b>{escape(journal.target)}</b> · run {escape(journal.id)} · started {started} ·
 {journal.duration_s:.1f} s</div>
<h2>Findings</h2><ul class=findings>{"".join(f"<li>{escape(x)}</li>" for x in findings)}</ul>
<h2>Steady-state hypothesis</h2>
<table><tr><th>tolerance</th><th>phase</th><th>probe</th><th>observed</th><th>verdict</th><th>detail</th></tr>
{tol_rows or "<tr><td colspan=6>no tolerances</td></tr>"}</table>
<h2>Over time</h2><p class=meta>Shaded: while a fault held.</p>
{"".join(charts)}
<h2>Lock tree at the worst moment</h2>{worst_html}
<h2>Probes by phase</h2>
<table><tr><th>probe</th><th>phase</th><th>requests</th><th>errors</th><th>error rate</th><th>timeouts</th>
<th>p50</th><th>p95</th><th>p99</th><th>max</th></tr>{_stats_rows(journal)}</table>
<h2>Faults</h2>
<table><tr><th>name</th><th>kind</th><th>at</th><th>for</th><th>held from</th><th>until</th><th>end</th>
<th>max blocked</th></tr>{fault_rows}</table>
<p class=meta>Rendered by dbchaos {escape(dbchaos.__version__)} from journal schema {escape(journal.schema)}.</p>
</main></body></html>
"""
