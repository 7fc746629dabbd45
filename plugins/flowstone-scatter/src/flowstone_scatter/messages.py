"""The scatter messages: small JSON objects of primitives, validated strictly.

``flowstone.scatter_chunk``: ``{"v": 1, "p": PIPELINE, "b": BARRIER_ID, "u": [START, END]}``
runs the queued items of units ``START..END-1`` (a unit is one item, or one batch).
``flowstone.scatter_read``: ``{"v": 1, "p": PIPELINE, "b": BARRIER_ID}`` streams the reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["CHUNK_TASK", "READ_TASK", "ChunkMessage", "ScatterMessageError", "parse_chunk",
           "parse_read"]

CHUNK_TASK: Final = "flowstone.scatter_chunk"
READ_TASK: Final = "flowstone.scatter_read"
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_MAX_UNITS = 100_000


class ScatterMessageError(ValueError):
    """A message that is not a valid scatter message (logged and dropped)."""


@dataclass(frozen=True, slots=True)
class ChunkMessage:
    pipeline: str
    barrier: int
    start: int = 0
    end: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"v": 1, "p": self.pipeline, "b": self.barrier, "u": [self.start, self.end]}

    def read_json(self) -> dict[str, Any]:
        return {"v": 1, "p": self.pipeline, "b": self.barrier}


def _int(v: object, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ScatterMessageError(f"{what} must be an int >= 0, got {v!r}")
    return v


def _base(body: object, keys: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict) or set(body) != keys:
        raise ScatterMessageError(f"expected an object with keys {sorted(keys)}, got {body!r:.200}")
    if body["v"] != 1:
        raise ScatterMessageError(f"unsupported message version {body['v']!r}")
    if not isinstance(body["p"], str) or not _NAME.match(body["p"]):
        raise ScatterMessageError(f"invalid pipeline name {body['p']!r:.200}")
    _int(body["b"], "barrier id")
    return body


def parse_chunk(body: object) -> ChunkMessage:
    """Validate a ``flowstone.scatter_chunk`` body."""
    d = _base(body, {"v", "p", "b", "u"})
    u = d["u"]
    if not isinstance(u, list) or len(u) != 2:
        raise ScatterMessageError(f"'u' must be [start, end], got {u!r:.200}")
    start, end = _int(u[0], "unit start"), _int(u[1], "unit end")
    if not start < end <= start + _MAX_UNITS:
        raise ScatterMessageError(f"invalid unit range {u!r}")
    return ChunkMessage(d["p"], d["b"], start, end)


def parse_read(body: object) -> ChunkMessage:
    """Validate a ``flowstone.scatter_read`` body."""
    d = _base(body, {"v", "p", "b"})
    return ChunkMessage(d["p"], d["b"])
