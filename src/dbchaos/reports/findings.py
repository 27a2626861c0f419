"""Plain-language findings: what a team should read first, computed from the figures."""

from __future__ import annotations

from collections import Counter

from dbchaos.reports import figures
from dbchaos.reports.journal import RunJournal


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "n/a"
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
    return f"{ms / 1000:.1f} s"


def fmt_s(s: float) -> str:
    return fmt_ms(s * 1000)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def probe_finding(journal: RunJournal, probe: str) -> str:
    base = figures.phase_stats(journal, "baseline", probe)
    during = figures.phase_stats(journal, "during", probe)
    after = figures.phase_stats(journal, "after", probe)
    parts = [f"{probe} p95 went from {fmt_ms(base.p95_ms)} to {fmt_ms(during.p95_ms)} during the fault"]
    failed = during.errors + after.errors
    timeouts = during.timeouts + after.timeouts
    if timeouts:
        committed = figures.phase_stats(journal, "overall", probe).committed_after_failure
        text = f"{_plural(timeouts, 'request')} timed out"
        if committed:
            text += f"; {committed} of the failed requests committed later"
        parts.append(text)
    if failed - timeouts > 0:
        parts.append(f"{_plural(failed - timeouts, 'request')} failed with an error")
    if not failed:
        parts.append("no request failed")
    rec = figures.recovery_s(journal, probe)
    end = figures.faults_end_t(journal)
    if end is not None:
        parts.append(
            f"it recovered {fmt_s(rec)} after the last fault ended"
            if rec is not None
            else "it had not recovered when the run ended"
        )
    return "; ".join(parts) + "."


def error_finding(journal: RunJournal, top: int = 3) -> str | None:
    """The most common errors, counted (e.g. "15 x QueuePool limit ... reached")."""
    counts: Counter[str] = Counter()
    for p in journal.probes:
        for r in p.results:
            if not r.ok:
                counts[(r.error or (f"HTTP {r.status}" if r.status else "error"))[:160]] += 1
    if not counts:
        return None
    listed = "; ".join(f"{n} × {msg}" for msg, n in counts.most_common(top))
    return f"Most common errors: {listed}."


def database_finding(journal: RunJournal) -> str | None:
    if not journal.samples:
        return None
    peak = max(journal.samples, key=lambda s: s.blocked)
    longest = max(s.longest_wait_s for s in journal.samples)
    conns = max(journal.samples, key=lambda s: s.connections)
    deadlocks = sum(s.deadlocks for s in journal.samples)
    rollbacks = sum(s.rollbacks for s in journal.samples)
    text = (
        f"PostgreSQL saw up to {_plural(peak.blocked, 'session')} blocked at once (longest wait {fmt_s(longest)}); "
        f"connections peaked at {conns.connections} of {conns.max_connections}"
    )
    if deadlocks:
        text += f"; {_plural(deadlocks, 'deadlock')}"
    if rollbacks:
        text += f"; {_plural(rollbacks, 'rollback')}"
    return text + "."


def all_findings(journal: RunJournal) -> list[str]:
    out: list[str] = []
    if journal.halted is not None:
        h = journal.halted
        out.append(
            f"The run was halted at {h.t:.1f} s: {h.condition} (observed {h.observed:g}); every fault was reverted."
        )
    out += [probe_finding(journal, name) for name in figures.probe_names(journal)]
    for extra in (database_finding(journal), error_finding(journal)):
        if extra:
            out.append(extra)
    for f in journal.faults:
        if f.state == "failed":
            out.append(f"Fault {f.name} ({f.kind}) failed: {f.error or 'see the journal'}.")
    return out
