"""dbchaos benchmarks: scripts run by hand (``make bench``), not tests. Each prints figures
next to a comparator measured in the same run; see docs/benchmarks.md."""
