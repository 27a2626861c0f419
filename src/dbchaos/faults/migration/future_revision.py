"""``future-revision``: a revision id shaped like the app's own, absent from its code —
a newer deploy migrated, then the code was rolled back."""

from __future__ import annotations

from dbchaos.faults.migration.base import VersionRowsFault, VersionTableParams
from dbchaos.faults.migration.graph import generate_id


class FutureRevisionParams(VersionTableParams):
    pass


class FutureRevision(VersionRowsFault[FutureRevisionParams]):
    """Alembic fails with "Can't locate revision"; the repair is to roll the code forward
    or to stamp the revision the code knows."""

    kind = "future-revision"
    summary = "Store a revision id from 'the future': shaped like the app's ids, absent from its code."
    params_model = FutureRevisionParams

    def new_rows(self, current: list[str]) -> list[str]:
        shape = sorted(self.graph.revisions) if self.graph else current
        return [generate_id(shape or current, self.graph)]
