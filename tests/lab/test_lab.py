"""``dbchaos lab`` as a user runs it: a healthy dashboard within 30 s, nothing left after
Ctrl-C or SIGTERM, and what a SIGKILLed lab left removed by the next one (Acceptance 1, 5)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from tests.helpers import wait_for
from tests.lab.lab_proc import DASHBOARD, LabProcess, alive, dbchaos_lab, lab_folders, port_in_use, private_tmp


@pytest.fixture
def tmp() -> Iterator[Path]:
    with private_tmp() as folder:
        yield folder


def _ports(lab: LabProcess) -> list[int]:
    status = lab.get("/lab/api/status")
    pg_port = int(status["psql"].split("port=")[1].split()[0])
    return [lab.port, int(urlsplit(status["demo"]["url"]).port or 0), pg_port]


def _requests_flowing(lab: LabProcess) -> int:
    buckets = lab.get("/lab/api/traffic")["buckets"]
    return sum(b["ok"] for b in buckets)


def _is_demo(p: psutil.Process) -> bool:
    try:
        return "dbchaos.lab.demo" in p.cmdline()
    except psutil.Error:
        return False


def _is_postgres(p: psutil.Process) -> bool:
    try:
        return p.name().startswith("postgres")
    except psutil.Error:
        return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_lab_reaches_a_healthy_dashboard_then_a_signal_leaves_nothing(tmp: Path, signum: int) -> None:
    with dbchaos_lab(tmp) as lab:
        print(f"\ndbchaos lab: dashboard line after {lab.ready_after_s:.1f} s")
        page = httpx.get(lab.dashboard, timeout=10)
        assert page.status_code == 200 and "dbchaos lab" in page.text
        assert lab.dashboard == f"http://127.0.0.1:{lab.port}/lab/"
        flowing = wait_for(lambda: max(_requests_flowing(lab) - 19, 0), 15.0, 0.2, what="traffic to flow") + 19
        elapsed = lab.ready_after_s
        print(f"dbchaos lab: {flowing} requests answered {elapsed:.1f} s after start")
        assert elapsed < 30, f"the dashboard took {elapsed:.1f} s"

        children = lab.descendants()
        assert any(_is_demo(p) for p in children) and any(_is_postgres(p) for p in children)
        ports = _ports(lab)
        assert all(port_in_use(p) for p in ports)
        folders = lab.folders()
        assert sorted(f.name.split("-")[0] for f in folders) == ["lab", "pg"]

        lab.proc.send_signal(signum)
        assert lab.proc.wait(30) == 0, lab.output()
        assert alive(children) == [], [p.pid for p in alive(children)]
        assert [p for p in ports if port_in_use(p)] == []
        assert lab_folders(tmp) == []
        stdout_lines = lab.stdout.read_text().splitlines()
        assert len(stdout_lines) == 1 and DASHBOARD.fullmatch(stdout_lines[0])


def test_after_sigkill_the_next_lab_removes_what_the_killed_one_left(tmp: Path) -> None:
    # --no-die-with-lab: the kernel does not end the children with the lab, so strays are left
    with dbchaos_lab(tmp, "--no-die-with-lab", "--no-traffic") as first:
        print(f"\nthe first lab: dashboard line after {first.ready_after_s:.1f} s")
        children = first.descendants()
        left = first.folders()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    strays = alive(children)
    assert any(_is_demo(p) for p in strays) and any(_is_postgres(p) for p in strays)
    assert len(left) == 2 and all(f.exists() for f in left)

    with dbchaos_lab(tmp, "--no-traffic") as second:
        print(f"\nthe second lab: dashboard line after {second.ready_after_s:.1f} s, strays removed")
        assert alive(children) == [], [(p.pid, p.cmdline()) for p in alive(children)]
        assert not any(f.exists() for f in left)
        assert len(second.folders()) == 2
        second.proc.send_signal(signal.SIGINT)
        assert second.proc.wait(30) == 0, second.output()
    assert lab_folders(tmp) == []
