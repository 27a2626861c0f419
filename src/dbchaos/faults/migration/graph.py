"""The application's Alembic revision graph, read from the operator's configuration.

Loading an Alembic script directory imports the revision files, i.e. runs their code, so
the location only ever comes from the operator (``--alembic-ini``), never from a request.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dbchaos.errors import InvalidInput

HEX = frozenset(string.hexdigits.lower())


@dataclass(frozen=True)
class RevisionGraph:
    """Revisions and their parents (``down_revision``; several at a merge)."""

    parents: Mapping[str, tuple[str, ...]]

    @classmethod
    def from_alembic_ini(cls, ini: Path) -> RevisionGraph:
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        if not ini.is_file():
            raise InvalidInput(f"no Alembic configuration at {ini}", field="alembic_ini")
        script = ScriptDirectory.from_config(Config(str(ini)))
        parents: dict[str, tuple[str, ...]] = {}
        for rev in script.walk_revisions():
            down = rev.down_revision
            if down is None:
                parents[rev.revision] = ()
            elif isinstance(down, str):
                parents[rev.revision] = (down,)
            else:
                parents[rev.revision] = tuple(down)
        return cls(parents)

    @property
    def revisions(self) -> frozenset[str]:
        return frozenset(self.parents)

    @property
    def heads(self) -> list[str]:
        children = {p for ps in self.parents.values() for p in ps}
        return sorted(r for r in self.parents if r not in children)

    def __contains__(self, rev: object) -> bool:
        return rev in self.parents

    def ancestors(self, rev: str) -> set[str]:
        """Every revision ``rev`` depends on (not ``rev`` itself)."""
        seen: set[str] = set()
        todo = list(self.parents.get(rev, ()))
        while todo:
            r = todo.pop()
            if r not in seen:
                seen.add(r)
                todo.extend(self.parents.get(r, ()))
        return seen

    def step_back(self, rev: str, steps: int, parent: int = 0) -> tuple[str, list[str]]:
        """The revision ``steps`` below ``rev`` and the path walked. At a merge it follows
        parent number ``parent`` (0 = the first ``down_revision``)."""
        path = [rev]
        current = rev
        for i in range(steps):
            ps = self.parents.get(current)
            if ps is None:
                raise InvalidInput(f"revision {current!r} is not in the application's scripts", field="params.revision")
            if not ps:
                raise InvalidInput(
                    f"cannot go {steps} step(s) back from {rev}: the base is reached after {i}",
                    code="beyond_base",
                    field="params.steps",
                )
            if len(ps) > 1 and parent >= len(ps):
                raise InvalidInput(
                    f"merge {current} has {len(ps)} parents; 'parent' must be below {len(ps)}", field="params.parent"
                )
            current = ps[parent] if len(ps) > 1 else ps[0]
            path.append(current)
        return current, path

    def latest_merge_below(self, rev: str) -> str | None:
        """The nearest merge revision at or below ``rev``."""
        current: str | None = rev
        while current is not None:
            ps = self.parents.get(current, ())
            if len(ps) > 1:
                return current
            current = ps[0] if ps else None
        return None

    def prefix_clash(self, candidate: str) -> bool:
        """Whether Alembic would resolve ``candidate`` to a real revision (it is one, or a prefix)."""
        return any(r.startswith(candidate) or candidate.startswith(r) for r in self.parents)


def generate_id(shape_from: Iterable[str], graph: RevisionGraph | None, *, length: int | None = None) -> str:
    """A revision id shaped like ``shape_from`` (length, hex or not) that names no real
    revision and is a prefix of none (Alembic resolves unique prefixes)."""
    samples = [s for s in shape_from if s]
    size = length or (len(samples[0]) if samples else 12)
    size = max(4, min(size, 32))
    hexy = all(set(s.lower()) <= HEX for s in samples) if samples else True
    alphabet = "0123456789abcdef" if hexy else string.ascii_lowercase + string.digits
    taken = set(samples) | (set(graph.revisions) if graph else set())
    for _ in range(1000):
        cand = "".join(secrets.choice(alphabet) for _ in range(size))
        if cand in taken:
            continue
        if graph is not None and graph.prefix_clash(cand):
            continue
        if any(s.startswith(cand) or cand.startswith(s) for s in samples):
            continue
        return cand
    raise RuntimeError("could not generate a fresh revision id")


def generate_unknown_id(graph: RevisionGraph | None, current: Iterable[str]) -> str:
    """An id that exists nowhere. Without the scripts it starts with a letter that is not a
    hex digit, so no generated Alembic id (hex) can start with it."""
    if graph is not None:
        return generate_id(list(graph.revisions) or list(current), graph)
    for _ in range(1000):
        cand = "x" + secrets.token_hex(6)[:11]
        if not any(s.startswith(cand) or cand.startswith(s) for s in current):
            return cand
    raise RuntimeError("could not generate an unknown revision id")
