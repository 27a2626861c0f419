"""Probes: the service under test, seen from its clients (HTTP requests, SQL statements).

See :mod:`dbchaos.probes.base` for the open-loop schedule and the result records, and
``docs/experiments.md`` for how experiment files configure them.
"""

from dbchaos.probes.base import Outcome, Probe, ProbeResult, ProbeRun
from dbchaos.probes.http import HttpProbe, HttpProbeConfig
from dbchaos.probes.sql import SqlProbe, SqlProbeConfig

__all__ = [
    "HttpProbe",
    "HttpProbeConfig",
    "Outcome",
    "Probe",
    "ProbeResult",
    "ProbeRun",
    "SqlProbe",
    "SqlProbeConfig",
]
