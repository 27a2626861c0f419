"""``dbchaos lab``: start everything in order, serve, and stop everything in reverse.

Start: remove what a killed lab left behind → the embedded PostgreSQL → database ``shop``
(role, real ``alembic upgrade head``, seed, opt-in) → the demo shop (child process) → the
chaos server with the lab's API and dashboard (one uvicorn app) → the observer and the
traffic → one line ``dashboard: <url>`` on stdout once the dashboard answers.

Stop (Ctrl-C, SIGTERM, or a start-up error): the server shuts down first, which reverts
every fault (the engine's lifespan); then traffic and observer stop, the demo is stopped,
PostgreSQL is stopped and removed, and the lab's folder is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx
import psycopg
import uvicorn

from dbchaos import errors
from dbchaos.cli.init import opt_in_target
from dbchaos.embedded.server import EmbeddedPostgres
from dbchaos.embedded.state import default_state_root, ensure_state_root
from dbchaos.lab.app import build_app
from dbchaos.lab.context import Lab
from dbchaos.lab.dbwatch import DbWatch
from dbchaos.lab.demo.config import Mode
from dbchaos.lab.demo_process import DemoShop
from dbchaos.lab.series import Series
from dbchaos.lab.shopdb import TARGET_NAME, create_shop
from dbchaos.lab.state import create_lab_folder, destroy_lab_folder, remove_stray_labs, write_record
from dbchaos.lab.traffic import DEFAULT_RATE, Traffic
from dbchaos.settings import Settings
from dbchaos.targets import Target

HOST = "127.0.0.1"
DEFAULT_PORT = 8080
#: the naive shop's pool timeout in the lab: SQLAlchemy's 30 s, lowered so a short fault shows it
LAB_POOL_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LabOptions:
    port: int = DEFAULT_PORT
    traffic: bool = True
    mode: Mode = Mode.NAIVE
    pool_timeout_s: float = LAB_POOL_TIMEOUT_S
    rate: float = DEFAULT_RATE
    deploy_timeout_s: float = 60.0
    #: children get a kernel signal if the lab dies (off only to test stray removal)
    die_with_lab: bool = True
    state_root: Path | None = None


class _Terminated(Exception):
    """SIGTERM arrived outside the server's own handling: unwind so every ``finally`` runs."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


class _LabServer(uvicorn.Server):
    """uvicorn, minus re-raising the signal after its graceful shutdown: the lab still has
    its own clean-up to do, then exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def run_lab(options: LabOptions, say: Callable[[str], None], announce: Callable[[str], None]) -> None:
    """Run the lab until SIGINT/SIGTERM. ``say`` gets progress lines (stderr), ``announce``
    the one ``dashboard:`` line (stdout). Raises ``DbChaosError`` when it cannot start;
    returns normally after a signal, everything stopped and removed."""
    if not port_free(options.port):
        raise errors.Conflict(
            f"port {options.port} on {HOST} is in use; choose another with --port", code="port_in_use"
        )
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    state_root = ensure_state_root(options.state_root or default_state_root())
    for stray in remove_stray_labs(state_root):
        say(f"removed what a killed lab left behind: {stray}")
    folder, record = create_lab_folder(state_root, options.port)
    pg = EmbeddedPostgres(state_root=state_root, die_with_owner=options.die_with_lab)
    demo: DemoShop | None = None
    try:
        say("starting the embedded PostgreSQL …")
        pg.start()
        say(
            f"PostgreSQL {pg.binaries.version} on 127.0.0.1:{pg.port}; "
            "creating database 'shop' (alembic upgrade head) …"
        )
        shop = create_shop(pg.dsn)
        asyncio.run(opt_in_target(Target(TARGET_NAME, shop.admin_dsn), "the chaos lab (dbchaos lab)"))
        demo = DemoShop(
            shop.app_dsn,
            folder,
            mode=options.mode,
            pool_timeout_s=options.pool_timeout_s,
            die_with_lab=options.die_with_lab,
        )
        demo.start()
        write_record(folder, record.with_changes(demo_pid=demo.pid, demo_port=demo.port))
        say(f"demo shop starting on {demo.url} ({options.mode.value}) …")
        series = Series()
        lab = Lab(
            shop=shop,
            demo=demo,
            series=series,
            watch=DbWatch(shop.admin_dsn, series),
            traffic=Traffic(lambda: demo.url, series, rate=options.rate) if options.traffic else None,
            server_version=str(pg.binaries.version),
            deploy_timeout_s=options.deploy_timeout_s,
        )
        settings = Settings(host=HOST, port=options.port, target_dsn=shop.admin_dsn, log_level="warning")
        app = build_app(settings, shop.admin_dsn, lab=lab)
        asyncio.run(_serve(app, lab, options, say, announce))
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        say("stopping: demo shop, PostgreSQL, lab folder …")
        with _quiet_signals():
            if demo is not None:
                demo.stop()
            try:
                pg.stop()
            finally:
                destroy_lab_folder(folder)
                signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _quiet_signals() -> Iterator[None]:
    """A second Ctrl-C or SIGTERM during clean-up must not leave it half done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def _serve(
    app: object, lab: Lab, options: LabOptions, say: Callable[[str], None], announce: Callable[[str], None]
) -> None:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=HOST,
        port=options.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = _LabServer(config)
    serving = asyncio.create_task(server.serve())
    background: list[asyncio.Task[None]] = []
    try:
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if not server.started:
            await serving  # raises what uvicorn raised (SystemExit on a bind error)
            return
        await lab.demo.wait_healthy()
        background.append(asyncio.create_task(lab.watch.run()))
        if lab.traffic is not None:
            background.append(asyncio.create_task(lab.traffic.run()))
        url = f"http://{HOST}:{options.port}/lab/"
        await _wait_dashboard(url, serving)
        if lab.traffic is not None:
            say(f"traffic: {lab.traffic.rate:g} requests/s against the demo shop")
        say(f"chaos API: http://{HOST}:{options.port}/v1 (target 'shop'); psql: psql '{lab.shop.admin_dsn}'")
        say("Ctrl-C stops everything")
        announce(f"dashboard: {url}")
        await serving
    finally:
        if not serving.done():
            server.should_exit = True
            with contextlib.suppress(BaseException):
                await serving
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await lab.watch.close()


async def _wait_dashboard(url: str, serving: asyncio.Task[None], timeout_s: float = 10.0) -> None:
    """Until the dashboard page and the lab API answer 200 through the real socket."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as client:
        while True:
            if serving.done():
                raise errors.DbChaosError("the server stopped during start-up", code="lab_start_failed")
            try:
                page = await client.get(url)
                api = await client.get(url + "api/status")
                if page.status_code == 200 and api.status_code == 200:
                    return
            except (httpx.HTTPError, psycopg.Error):
                pass
            if loop.time() > deadline:
                raise errors.DbChaosError(f"the dashboard at {url} did not answer", code="lab_start_failed")
            await asyncio.sleep(0.1)
