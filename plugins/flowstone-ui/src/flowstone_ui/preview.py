"""A bounded text preview of any value: never more than :data:`MAX_CHARS` characters, and
never walking more than :data:`MAX_ITEMS` elements of a container, however big it is."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_CHARS", "MAX_ITEMS", "preview"]

MAX_CHARS = 4000
MAX_ITEMS = 50
_MAX_DEPTH = 4


def preview(value: Any) -> tuple[str, str, bool]:
    """``(type name, text, truncated)`` of ``value``."""
    cut = [False]
    text = json.dumps(_bounded(value, 0, cut), indent=1, ensure_ascii=False, default=str)
    if len(text) > MAX_CHARS:
        text, cut[0] = text[:MAX_CHARS] + " ...", True
    return type(value).__name__, text, cut[0]


def _bounded(value: Any, depth: int, cut: list[bool]) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if len(value) > MAX_CHARS:
            cut[0] = True
            return value[:MAX_CHARS]
        return value
    if isinstance(value, bytes | bytearray):
        cut[0] = cut[0] or len(value) > 64
        return f"<{len(value)} bytes: {bytes(value[:64])!r}>"
    if depth >= _MAX_DEPTH:
        cut[0] = True
        return f"<{type(value).__name__}>"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= MAX_ITEMS:
                cut[0] = True
                out["..."] = f"{len(value) - MAX_ITEMS} more keys"
                break
            out[str(k)] = _bounded(v, depth + 1, cut)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = []
        for i, v in enumerate(value):
            if i >= MAX_ITEMS:
                cut[0] = True
                items.append(f"... {len(value) - MAX_ITEMS} more items")
                break
            items.append(_bounded(v, depth + 1, cut))
        return items
    text = repr(value)
    if len(text) > 500:
        cut[0] = True
        text = text[:500] + "..."
    return text
