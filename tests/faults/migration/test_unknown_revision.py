"""unknown-revision with the real Alembic CLI."""

from __future__ import annotations

import asyncio

from dbchaos.engine.model import EndReason, State
from dbchaos.faults.migration.graph import RevisionGraph
from tests.alembic_helpers import HEAD, alembic, last_line
from tests.helpers import query, running_engine


def versions(dsn: str) -> list[str]:
    return sorted(r[0] for r in query(dsn, "SELECT version_num FROM alembic_version"))


def test_alembic_cannot_locate_the_revision_and_revert_restores_it(alembic_db: str, graph: RevisionGraph) -> None:
    from dbchaos.engine.engine import FaultRequest

    async def scenario() -> None:
        async with running_engine(alembic_db, graph) as engine:
            rec = await engine.create(FaultRequest("unknown-revision", {}, duration_s=30))
            assert rec.state is State.ACTIVE
            (stored,) = versions(alembic_db)
            assert stored != HEAD and not any(r.startswith(stored) for r in graph.revisions)
            for args in (["current"], ["upgrade", "head"]):
                res = await asyncio.to_thread(alembic, alembic_db, *args)
                assert res.returncode != 0
                assert f"Can't locate revision identified by '{stored}'" in res.stdout + res.stderr
            await engine.abort(rec.id)
            assert rec.state is State.REVERTED and rec.end_reason is EndReason.ABORTED
            assert rec.details["verified"] is True
        assert versions(alembic_db) == [HEAD]
        res = alembic(alembic_db, "upgrade", "head")
        assert res.returncode == 0 and "Running upgrade" not in res.stderr
        assert HEAD in last_line(alembic(alembic_db, "current"))

    asyncio.run(scenario())
