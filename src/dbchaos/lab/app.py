"""The lab's HTTP application: the chaos server on the shop database, plus the lab's API
and the dashboard (static files shipped in the package) under ``/lab/``."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from dbchaos.api.app import create_app
from dbchaos.lab import api
from dbchaos.lab.context import Lab
from dbchaos.lab.demo.migrate import revision_graph
from dbchaos.lab.shopdb import TARGET_NAME
from dbchaos.settings import Settings
from dbchaos.targets import Target

STATIC_DIR = Path(__file__).with_name("static")
_NO_CACHE = {"Cache-Control": "no-cache"}


def build_app(settings: Settings, target_dsn: str, *, lab: Lab | None = None, recover_on_start: bool = True) -> FastAPI:
    """``create_app`` with the one target ``shop`` (and the demo's revision graph, so every
    migration kind works), the lab's routes and the dashboard. Without ``lab`` the routes
    that need the running lab answer 404 ``lab_not_running``."""
    settings = settings.with_overrides(target_name=TARGET_NAME)
    app = create_app(
        settings,
        {TARGET_NAME: Target(TARGET_NAME, target_dsn)},
        graphs={TARGET_NAME: revision_graph()},
        recover_on_start=recover_on_start,
    )
    app.state.lab = lab
    app.include_router(api.router)

    @app.get("/lab", include_in_schema=False)
    async def lab_root() -> RedirectResponse:
        return RedirectResponse("/lab/")

    @app.get("/lab/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=_NO_CACHE)

    app.mount("/lab/static", StaticFiles(directory=STATIC_DIR), name="lab-static")
    return app
