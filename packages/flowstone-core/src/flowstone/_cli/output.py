"""Rendering for the command line: JSON documents, value previews and aligned tables.

Values may hold types JSON has no spelling for. They are rendered readably, the same
way everywhere (``docs/cli.md`` documents it): dates and times as ISO 8601 text,
``Decimal``/``UUID``/paths as text, ``bytes`` as base64 text, ``timedelta`` as seconds,
tuples and sets as arrays, dataclasses and mappings as objects, ``NaN``/infinities as
the strings ``"NaN"``/``"Infinity"``/``"-Infinity"`` (so the output stays valid JSON),
and anything else as ``str(value)``.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import math
import sys
from collections.abc import Mapping, Sequence, Set
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TextIO

__all__ = ["dump_json", "json_default", "jsonable", "preview", "print_json", "table"]

PREVIEW_CHARS = 200


def json_default(value: object) -> Any:
    """``json.dumps(default=...)``: a JSON-able stand-in for one non-JSON value."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Set):
        return list(value)
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


def jsonable(value: Any) -> Any:
    """A copy of ``value`` made only of JSON types (see the module docstring).

    Walked eagerly rather than left to ``default=`` because ``json`` never calls
    ``default`` for mapping keys or for ``NaN``, and both appear in real values.
    """
    return _walk(value, set())


def _walk(value: Any, path: set[int]) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if id(value) in path:  # a self-referencing container must not recurse forever
        return "<cycle>"
    if isinstance(value, Mapping) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    ):
        items = value.items() if isinstance(value, Mapping) else json_default(value).items()
        path.add(id(value))
        out = {_key(k): _walk(v, path) for k, v in items}
        path.discard(id(value))
        return out
    if isinstance(value, list | tuple | Set) or (
        isinstance(value, Sequence) and not isinstance(value, bytes | bytearray | memoryview)
    ):
        path.add(id(value))
        out_list = [_walk(v, path) for v in value]
        path.discard(id(value))
        return out_list
    replacement = json_default(value)
    if isinstance(replacement, str | float | int):
        return _walk(replacement, path)
    return _walk(replacement, path | {id(value)})


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    rendered = _walk(key, set())
    return rendered if isinstance(rendered, str) else json.dumps(rendered, sort_keys=True)


def dump_json(value: Any, *, indent: int | None = 2) -> str:
    """One JSON document for ``value``; never fails on a value's type."""
    return json.dumps(jsonable(value), indent=indent, default=json_default, ensure_ascii=False)


def print_json(value: Any, stream: TextIO | None = None) -> None:
    """Write ``value`` as one JSON document (and a newline) to stdout."""
    print(dump_json(value), file=stream or sys.stdout)


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """A one-line rendering of a value, cut to about ``limit`` characters."""
    text = value if isinstance(value, str) else dump_json(value, indent=None)
    text = " ".join(text.splitlines())
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} chars in all; --json or `flowstone get` shows it)"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as left-aligned columns under ``headers``; ``None`` shows as ``-``."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = [_line(headers, widths)] + [_line(r, widths) for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
