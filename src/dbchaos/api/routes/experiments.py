"""Experiments over HTTP: ``POST /v1/experiments`` starts one in the background; GET shows its
progress and, once finished, its verdict, findings, journal and HTML report; DELETE stops it
(everything reverted, verdict ``halted``)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from dbchaos import errors
from dbchaos.api.context import AppContext, context_of, get_context
from dbchaos.experiments.manager import ExperimentManager
from dbchaos.experiments.spec import Experiment, parse_experiment
from dbchaos.reports.html import render_html
from dbchaos.targets import Target

router = APIRouter(prefix="/v1")
Ctx = Annotated[AppContext, Depends(get_context)]

#: an experiment document sent over HTTP, as YAML or JSON text, at most this long
MAX_DOCUMENT_CHARS = 256 * 1024


def get_manager(request: Request) -> ExperimentManager:
    """The app's experiment manager (made on first use; closed by the app's lifespan)."""
    manager = getattr(request.app.state, "experiments", None)
    if manager is None:
        manager = ExperimentManager(context_of(request).engine)
        request.app.state.experiments = manager
    assert isinstance(manager, ExperimentManager)
    return manager


Manager = Annotated[ExperimentManager, Depends(get_manager)]


class ExperimentCreate(BaseModel):
    experiment: str | dict[str, Any] = Field(
        description="The experiment, as YAML text or a JSON object (the file format of docs/experiments.md, "
        "without `report`: the server keeps the journal and serves the report)"
    )
    labels: dict[str, str] | None = Field(default=None, description="Free-form labels: owner, reason, ticket")


def _parse(ctx: AppContext, body: ExperimentCreate) -> tuple[Experiment, Target]:

    # not ASCII-escaped: YAML would read a character beyond U+FFFF, escaped as a pair, as two lone surrogates
    text = body.experiment if isinstance(body.experiment, str) else json.dumps(body.experiment, ensure_ascii=False)
    if len(text) > MAX_DOCUMENT_CHARS:
        raise errors.InvalidInput(f"the experiment is longer than {MAX_DOCUMENT_CHARS} characters", field="experiment")
    exp = parse_experiment(
        text, source="experiment", known_targets=list(ctx.targets), max_duration_s=ctx.settings.max_duration_s
    )
    if exp.report_json is not None or exp.report_html is not None:
        raise errors.InvalidInput(
            "`report` paths are for `dbchaos run`; over the API, GET /v1/experiments/{id} and .../report serve them",
            field="experiment.report",
        )
    if exp.target.dsn is not None:
        raise errors.Forbidden(
            "an experiment sent to the server must name a configured target, not a DSN",
            code="ad_hoc_target_refused",
            field="experiment.target",
        )
    return exp, ctx.target(exp.target.name)


@router.post("/experiments", status_code=202, summary="Start an experiment (runs in the background)")
async def create_experiment(body: ExperimentCreate, ctx: Ctx, manager: Manager) -> JSONResponse:
    exp, target = _parse(ctx, body)
    run = await manager.start(exp, target, dict(body.labels or {}))
    return JSONResponse(run.view(), status_code=202)


@router.get("/experiments", summary="Experiments, newest first")
async def list_experiments(manager: Manager) -> dict[str, Any]:
    return {"experiments": [r.view() for r in manager.all()]}


@router.get("/experiments/{run_id}", summary="One experiment: progress, or verdict and journal")
async def get_experiment(run_id: str, manager: Manager) -> dict[str, Any]:
    return manager.get(run_id).view(full=True)


@router.get("/experiments/{run_id}/report", summary="The experiment's self-contained HTML report")
async def experiment_report(run_id: str, manager: Manager) -> HTMLResponse:
    run = manager.get(run_id)
    if run.journal is None:
        raise errors.Conflict(f"experiment {run_id} has not finished", code="experiment_running")
    return HTMLResponse(render_html(run.journal))


@router.delete("/experiments/{run_id}", summary="Stop an experiment (reverts its faults)")
async def stop_experiment(run_id: str, manager: Manager) -> dict[str, Any]:
    return manager.stop(run_id).view()
