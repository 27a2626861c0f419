"""``missing-version``: the version rows deleted (the table stays)."""

from __future__ import annotations

from dbchaos.faults.migration.base import VersionRowsFault, VersionTableParams


class MissingVersionParams(VersionTableParams):
    pass


class MissingVersion(VersionRowsFault[MissingVersionParams]):
    """``alembic current`` prints nothing; ``upgrade`` replays from the base and fails on the
    first table that already exists."""

    kind = "missing-version"
    summary = "Delete every row of the Alembic version table."
    params_model = MissingVersionParams

    def new_rows(self, current: list[str]) -> list[str]:
        return []
