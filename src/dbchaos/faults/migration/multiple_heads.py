"""``multiple-heads``: extra rows in the version table — an ancestor next to the head
(``overlap``) or the tips of two parallel branches (``branches``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from dbchaos.errors import Conflict, InvalidInput
from dbchaos.faults.migration.base import VersionRowsFault, VersionTableParams
from dbchaos.faults.migration.behind import NEEDS_SCRIPTS, check_older, single_current


class MultipleHeadsParams(VersionTableParams):
    variant: Literal["overlap", "branches"] = "overlap"
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="overlap only: the ancestor to add (default: the head's first parent)",
    )


class MultipleHeads(VersionRowsFault[MultipleHeadsParams]):
    """``overlap``: ``upgrade`` fails with "overlaps with other requested revisions" while
    ``current`` shows only the head. ``branches``: ``upgrade +1`` is ambiguous and
    ``upgrade head`` re-runs DDL."""

    kind = "multiple-heads"
    summary = "Add rows to the version table: an overlapping ancestor, or two branch tips."
    params_model = MultipleHeadsParams

    def new_rows(self, current: list[str]) -> list[str]:
        graph = self.graph
        if self.params.variant == "overlap":
            if self.params.revision is not None:
                if graph is not None and self.params.revision not in graph:
                    raise InvalidInput(
                        f"revision {self.params.revision!r} is not in the application's scripts",
                        code="unknown_revision",
                        field="params.revision",
                    )
                if self.params.revision in current:
                    raise InvalidInput("that revision is already stored", field="params.revision")
                return [*current, check_older(self.params.revision, current, graph)]
            if graph is None:
                raise InvalidInput(
                    f"multiple-heads {NEEDS_SCRIPTS}", code="scripts_not_configured", field="params.revision"
                )
            head = single_current(current, graph)
            parents = graph.parents[head]
            if not parents:
                raise Conflict(f"{head} is the base revision: it has no ancestor to add", code="version_table_state")
            return [*current, parents[0]]
        if self.params.revision is not None:
            raise InvalidInput(
                "revision applies to variant 'overlap' only; 'branches' takes the two parents of the nearest merge",
                field="params.revision",
            )
        if graph is None:
            raise InvalidInput(
                f"multiple-heads with variant 'branches' {NEEDS_SCRIPTS.split(', or name')[0]}",
                code="scripts_not_configured",
                field="params.variant",
            )
        merge = graph.latest_merge_below(single_current(current, graph))
        if merge is None:
            raise InvalidInput(
                "the application's revision graph has no merge below the stored revision, so no parallel branches",
                code="no_branches",
                field="params.variant",
            )
        return list(graph.parents[merge])
