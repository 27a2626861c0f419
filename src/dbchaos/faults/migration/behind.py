"""``behind``: an older, real revision stored, so the code is ahead of the database."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from dbchaos.errors import Conflict, InvalidInput
from dbchaos.faults.migration.base import VersionRowsFault, VersionTableParams
from dbchaos.faults.migration.graph import RevisionGraph

NEEDS_SCRIPTS = (
    "needs the application's Alembic scripts to find an older revision: start dbchaos with "
    "--alembic-ini PATH (or DBCHAOS_ALEMBIC_INI), or name the revision in params.revision"
)


class BehindParams(VersionTableParams):
    revision: str | None = Field(
        default=None, min_length=1, max_length=32, description="The older revision to store (default: steps back)"
    )
    steps: int = Field(default=1, ge=1, le=10_000, strict=True, description="How many revisions back (default 1)")
    parent: int = Field(
        default=0, ge=0, le=16, strict=True, description="At a merge, which parent to follow (0 = first)"
    )


def single_current(current: list[str], graph: RevisionGraph) -> str:
    if len(current) != 1:
        raise Conflict(
            f"the version table holds {len(current)} rows ({current}); this fault needs exactly one",
            code="version_table_state",
        )
    if current[0] not in graph:
        raise Conflict(
            f"the stored revision {current[0]!r} is not in the application's scripts", code="version_table_state"
        )
    return current[0]


def check_older(revision: str, current: list[str], graph: RevisionGraph | None) -> str:
    """An explicit revision must change something and, where the scripts know the stored
    revisions, be older than one of them (else the state is not "behind" nor an overlap)."""
    if [revision] == current:
        raise InvalidInput(
            f"revision {revision!r} is the one stored now: nothing would change",
            code="already_stored",
            field="params.revision",
        )
    known = [r for r in current if graph is not None and r in graph]
    if graph is not None and known and not any(revision in graph.ancestors(r) for r in known):
        raise InvalidInput(
            f"revision {revision!r} is not older than the stored {', '.join(known)}; "
            "it must be an ancestor of the stored revision",
            code="not_an_ancestor",
            field="params.revision",
        )
    return revision


class Behind(VersionRowsFault[BehindParams]):
    """``alembic upgrade`` re-runs migrations already applied and fails with a
    duplicate-object error."""

    kind = "behind"
    summary = "Store an older real revision: the code is ahead of the database."
    params_model = BehindParams

    def __init__(self, params: BehindParams) -> None:
        super().__init__(params)
        self.path: list[str] = []

    def new_rows(self, current: list[str]) -> list[str]:
        graph = self.graph
        if self.params.revision is not None:
            if graph is not None and self.params.revision not in graph:
                raise InvalidInput(
                    f"revision {self.params.revision!r} is not in the application's scripts",
                    code="unknown_revision",
                    field="params.revision",
                )
            return [check_older(self.params.revision, current, graph)]
        if graph is None:
            raise InvalidInput(f"behind {NEEDS_SCRIPTS}", code="scripts_not_configured", field="params.revision")
        target, self.path = graph.step_back(single_current(current, graph), self.params.steps, self.params.parent)
        return [target]

    def details(self) -> dict[str, Any]:
        out = super().details()
        if self.path:
            out["path"] = self.path
        return out
