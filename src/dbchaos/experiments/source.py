"""Reading a YAML document while remembering where every value came from.

PyYAML's ``safe_load`` forgets positions. Here the document is composed into nodes (each
with its start mark) and built by hand, recording the line and column of every value and
every mapping key by path (``("method", 0, "params", "mode")``), so that any later
validation error can name the line of the offending text. Keys are kept as written
(YAML 1.1 would turn a key ``on`` or ``yes`` into ``True``), a key given twice is an error
(PyYAML would keep the last silently), and merge keys (``<<: *defaults``) work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

PathT = tuple[str | int, ...]


@dataclass(frozen=True)
class Mark:
    """A position in the file, 1-based. ``style`` and ``single_line`` describe a scalar's
    text (so a column inside a string can be computed); ``None`` for collections."""

    line: int
    column: int
    style: str | None = None
    single_line: bool = False
    is_scalar: bool = False


class SourceError(Exception):
    """The text is not a YAML document we can read (syntax, duplicate key...)."""

    def __init__(self, message: str, line: int | None, column: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


@dataclass
class Located:
    """The plain data of a document plus the marks of its values and keys."""

    data: Any
    values: dict[PathT, Mark] = field(default_factory=dict)
    keys: dict[PathT, Mark] = field(default_factory=dict)
    #: keys that came from a merge (``<<``) and may be overridden by the mapping's own
    merged: set[PathT] = field(default_factory=set)

    def mark(self, path: PathT, *, key: bool = False) -> Mark:
        """Where ``path`` is written: its key (``key=True``, for "unknown key") or its value;
        for a path that is not there (a missing key), the key of the nearest enclosing entry
        (``params:``), or the start of the enclosing list item (``- kind: ...``)."""
        if key and path in self.keys:
            return self.keys[path]
        if path in self.values:
            return self.values[path]
        p = tuple(path[:-1])
        while p:  # a missing key: point at the key of the mapping that lacks it
            if p in self.keys:
                return self.keys[p]
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get((), Mark(1, 1))

    def column_in(self, path: PathT, offset: int) -> Mark:
        """The mark of character ``offset`` inside the string at ``path`` (where the string is
        written on one line as a plain or quoted scalar; else the string's own mark)."""
        m = self.mark(path)
        if not (m.is_scalar and m.single_line and m.style in (None, "'", '"')):
            return m
        return Mark(m.line, m.column + offset + (0 if m.style is None else 1))


def _mark(node: yaml.Node) -> Mark:
    start, end = node.start_mark, node.end_mark
    if isinstance(node, yaml.ScalarNode):
        return Mark(start.line + 1, start.column + 1, node.style, start.line == end.line, True)
    return Mark(start.line + 1, start.column + 1)


def _error(message: str, node: yaml.Node | None) -> SourceError:
    if node is None:
        return SourceError(message, None, None)
    return SourceError(message, node.start_mark.line + 1, node.start_mark.column + 1)


def load(text: str) -> Located:
    """Parse one YAML document; ``SourceError`` with the line of any syntax problem."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # the reader refuses control characters before any parsing
        raise SourceError(f"YAML syntax error: {exc}", None, None) from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = ": ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
            raise SourceError(
                f"YAML syntax error: {problem}",
                None if mark is None else mark.line + 1,
                None if mark is None else mark.column + 1,
            ) from None
        except yaml.YAMLError as exc:
            raise SourceError(f"YAML syntax error: {exc}", None, None) from None
        if node is None:
            raise SourceError("the file is empty", 1, 1)
        located = Located(None)
        located.data = _build(loader, node, (), located, set())
        return located
    finally:
        loader.dispose()


def _build(loader: yaml.SafeLoader, node: yaml.Node, path: PathT, out: Located, active: set[int]) -> Any:
    out.values[path] = _mark(node)
    if isinstance(node, yaml.ScalarNode):
        try:
            return loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise _error(f"cannot read this value: {exc.problem}", node) from None
    if id(node) in active:
        raise _error("a recursive alias cannot be used here", node)
    active.add(id(node))
    try:
        if isinstance(node, yaml.SequenceNode):
            return [_build(loader, item, (*path, i), out, active) for i, item in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            local = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
            try:
                loader.flatten_mapping(node)  # merge keys: merged entries first, then the local ones
            except yaml.MarkedYAMLError as exc:
                raise _error(f"cannot merge here: {exc.problem}", node) from None
            merged = len(node.value) - local
            result: dict[str, Any] = {}
            for i, (key_node, value_node) in enumerate(node.value):
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _error("a key must be a plain name, not a list or a mapping", key_node)
                key = str(key_node.value)
                if key in result and i >= merged and (*path, key) not in out.merged:
                    raise _error(f"the key {key!r} is given twice", key_node)
                if i < merged:
                    out.merged.add((*path, key))
                else:
                    out.merged.discard((*path, key))
                out.keys[(*path, key)] = _mark(key_node)
                result[key] = _build(loader, value_node, (*path, key), out, active)
            return result
    finally:
        active.discard(id(node))
    raise _error("unsupported YAML node", node)
