"""``unknown-revision``: the stored revision(s) replaced by an id that exists nowhere."""

from __future__ import annotations

from dbchaos.faults.migration.base import VersionRowsFault, VersionTableParams
from dbchaos.faults.migration.graph import generate_unknown_id


class UnknownRevisionParams(VersionTableParams):
    pass


class UnknownRevision(VersionRowsFault[UnknownRevisionParams]):
    """Every Alembic command then fails with "Can't locate revision identified by ...".
    The id is a prefix of no real revision (Alembic resolves unique prefixes)."""

    kind = "unknown-revision"
    summary = "Replace the stored Alembic revision with an id that exists nowhere."
    params_model = UnknownRevisionParams

    def new_rows(self, current: list[str]) -> list[str]:
        return [generate_unknown_id(self.graph, current)]
