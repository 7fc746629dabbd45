"""Object keys for asset values: readable, distinct, and never outside the prefix.

Layout::

    <prefix>/<pipeline>/<asset>/<partition>/<run_id>/<attempt>[.item-N].<ext>

Every name part is percent-encoded except ``A-Z a-z 0-9 _ - . =`` (so ``/`` inside a
partition stays inside its part), an empty partition is written ``@``, and a part longer
than 200 characters is cut to a prefix plus a SHA-256 digest. Names that look like an
attempt to leave the prefix -- a ``.``/``..`` path step, an absolute path (``/x``, ``\\x``,
``C:``) or a control character -- are refused with :class:`~flowstone.errors.UnsafeKeyError`
naming the part, rather than silently encoded: such a name is almost always a bug or an
attack, and an object store browsed as folders would show it misleadingly.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from flowstone.errors import UnsafeKeyError, UsageError
from flowstone.protocols import StorageKey

__all__ = ["EXTENSIONS", "ObjectName", "check_prefix", "object_name", "parse_location"]

EXTENSIONS = ("json", "bin", "arrow.parquet", "rows.parquet", "pandas.parquet")
"""Location extensions: the stored format, and for Parquet the Python type it loads as."""

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.=")
_EMPTY = "@"  # "@" is always escaped, so no real name encodes to it
_MAX_PART = 200
_HASHED_PREFIX = 120
_DRIVE = re.compile(r"[A-Za-z]:")
_PART = r"[A-Za-z0-9_.=%~@-]+"
_TAIL = re.compile(
    rf"({_PART})/({_PART})/({_PART})/({_PART})/(0|[1-9][0-9]{{0,8}})"
    rf"(?:\.item-(0|[1-9][0-9]{{0,18}}))?\.({'|'.join(re.escape(e) for e in EXTENSIONS)})"
)


@dataclass(frozen=True, slots=True)
class ObjectName:
    """A validated value location: the object key and the extension telling its format."""

    key: str
    extension: str


def check_prefix(prefix: str) -> str:
    """Validate a manager prefix and return it without surrounding slashes.

    Raises:
        UsageError: the prefix holds a ``.``/``..`` step, an empty step or a control character.
    """
    if not isinstance(prefix, str):
        raise UsageError(f"prefix must be a str, got {type(prefix).__name__}.")
    stripped = prefix.strip("/")
    steps = stripped.split("/") if stripped else []
    if any(s in ("", ".", "..") for s in steps) or any(_is_control(c) for c in prefix):
        raise UsageError(
            f"prefix {prefix!r} is not a clean key prefix. Fix: use names separated by single "
            "'/', without '.' or '..' steps or control characters, e.g. 'flowstone/values'."
        )
    return stripped


def object_name(prefix: str, key: StorageKey, attempt: int, extension: str) -> str:
    """The object key of one value (``prefix`` already checked).

    Raises:
        UnsafeKeyError: a name part would escape the prefix, ``attempt`` or ``key.item`` is
            not a non-negative int.
    """
    if type(attempt) is not int or not 0 <= attempt < 10**9:
        raise UnsafeKeyError(
            f"the attempt of asset {key.asset!r} must be an int in 0..999999999, got {attempt!r}."
        )
    parts = [
        _part("pipeline", key.pipeline, key),
        _part("asset", key.asset, key),
        _part("partition", key.partition, key, may_be_empty=True),
        _part("run_id", key.run_id, key),
    ]
    tail = str(attempt)
    if key.item is not None:
        if type(key.item) is not int or key.item < 0:
            raise UnsafeKeyError(
                f"storage key item must be a non-negative int, got {key.item!r} for asset "
                f"{key.asset!r}. Item numbers are scatter item indexes (0, 1, 2...)."
            )
        tail += f".item-{key.item}"
    name = "/".join([*parts, f"{tail}.{extension}"])
    return f"{prefix}/{name}" if prefix else name


def parse_location(prefix: str, key: str) -> ObjectName:
    """Validate an object key taken from a location (which may come from a database).

    Raises:
        UnsafeKeyError: the key is not one :func:`object_name` produces under ``prefix``.
    """
    head = f"{prefix}/" if prefix else ""
    match = _TAIL.fullmatch(key[len(head) :]) if key.startswith(head) else None
    if match is None or any(p in (".", "..") for p in match.groups()[:4]):
        raise UnsafeKeyError(
            f"{key!r} is not a value key under prefix {prefix!r} (expected "
            f"'{head}<pipeline>/<asset>/<partition>/<run_id>/<attempt>[.item-N].<ext>'). "
            "Pass the location store() returned, unchanged."
        )
    return ObjectName(key, match.group(7))


def _is_control(char: str) -> bool:
    return ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0


def _part(field: str, text: object, key: StorageKey, *, may_be_empty: bool = False) -> str:
    if not isinstance(text, str):
        raise UnsafeKeyError(
            f"storage key {field} must be a string, got {type(text).__name__} {text!r} in "
            f"{key!r}. Encode partitions with flowstone.partitions.encode_partition."
        )
    if text == "":
        if may_be_empty:
            return _EMPTY
        raise UnsafeKeyError(f"storage key {field} is empty in {key!r}. Give it a name.")
    steps = re.split(r"[/\\]", text)
    problem = (
        "holds a control character"
        if any(_is_control(c) for c in text)
        else "is an absolute path"
        if text[0] in "/\\" or _DRIVE.match(text)
        else "has a '.' or '..' path step"
        if any(s in (".", "..") for s in steps)
        else None
    )
    if problem is not None:
        raise UnsafeKeyError(
            f"storage key {field} {text!r} {problem}, which could escape the IO manager's "
            "prefix; it is refused. Fix: rename the "
            f"{'partition key' if field == 'partition' else field}."
        )
    raw = text.encode("utf-8", "surrogatepass")
    out = "".join(chr(b) if chr(b) in _SAFE else f"%{b:02X}" for b in raw)
    if len(out) > _MAX_PART:
        # "~" is always escaped, so a shortened part never equals a short one; the digest of
        # the whole name keeps long names apart from each other.
        out = f"{out[:_HASHED_PREFIX]}~{hashlib.sha256(raw).hexdigest()[:32]}"
    return out
