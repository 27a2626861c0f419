"""Run journals (JSON, a stable documented schema) and the reports rendered from them.

The experiment runner writes a :class:`~dbchaos.reports.journal.RunJournal`; everything a
report shows — figures, verdicts, findings, charts — is computed from that journal alone,
so ``dbchaos report RUN.json`` re-renders the same report anywhere.
"""
