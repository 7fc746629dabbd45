"""Rules every partition set shares: the "not a partition" error, reading a key that may
be given as CLI text, and refusing a range whose start is after its end.

Errors show keys as the CLI takes them (``'2024-04-01'``, not ``datetime.date(2024, 4,
1)``) and, when there is one, the valid key nearest to the one given.

Internal helpers of :mod:`flowstone.partitions`; no public promise.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, NoReturn

from flowstone._internal.partition_codec import PartitionKey
from flowstone.errors import PartitionError

if TYPE_CHECKING:
    from flowstone.partitions import PartitionSet

__all__ = ["closest_text", "coerce", "key_text", "ordered", "range_error", "set_text"]


def key_text(key: object, owner: object = None) -> str:
    """``key`` spelled as ``--partition`` takes it (an hour in the set's local time)."""
    local_time = getattr(owner, "local_time", None)
    if isinstance(key, datetime):
        if key.utcoffset() is not None and callable(local_time):
            key = local_time(key)
        assert isinstance(key, datetime)
        spec = "minutes" if not (key.second or key.microsecond) else "auto"
        text = key.isoformat(timespec=spec)
        return text.replace("+00:00", "Z") if text.endswith("+00:00") else text
    if isinstance(key, date):
        return key.isoformat()
    if isinstance(key, str):
        return key
    if isinstance(key, bool) or not isinstance(key, int | tuple):
        return repr(key)
    if isinstance(key, int):
        return str(key)
    dimensions = getattr(owner, "dimensions", None)
    parts = [s for _, s in dimensions] if dimensions else [None] * len(key)
    if len(parts) != len(key):
        parts = [None] * len(key)
    return "|".join(key_text(k, s) for k, s in zip(key, parts, strict=True))


def set_text(owner: object) -> str:
    """A partition set in a line: its kind, its range or keys, its timezone."""
    kind = type(owner).__name__
    start = getattr(owner, "start", None)
    if start is not None:
        end = getattr(owner, "end", None)
        until = key_text(end, owner) if end is not None else "open-ended"
        zone = getattr(owner, "timezone", "UTC")
        return f"{kind}({key_text(start, owner)} .. {until}, timezone {zone})"
    members = getattr(owner, "members", None)
    if members is not None:
        shown = ", ".join(repr(m) for m in members[:10])
        return f"{kind}({shown}{', ...' if len(members) > 10 else ''})"
    names = getattr(owner, "dimension_names", None)
    if names is not None:
        return f"{kind}({' x '.join(names)})"
    return repr(owner)


def range_error(
    owner: object, key: object, allowed: str, fix: str, nearest: object = None
) -> PartitionError:
    """The error for ``key`` outside ``owner``, naming the nearest valid key if given."""
    hint = f" The nearest partition is '{key_text(nearest, owner)}'." if nearest is not None else ""
    return PartitionError(
        f"'{key_text(key, owner)}' is not a partition of {set_text(owner)}: {allowed}.{hint} {fix}"
    )


def closest_text(text: str, candidates: list[str]) -> str | None:
    """The candidate fewest edits away from ``text`` (a swap of neighbours is one edit),
    when it is close enough to be what was meant: at most a third of its letters changed."""
    best, best_distance = None, max(1, len(text) // 3) + 1
    for candidate in candidates:
        distance = _edits(text, candidate, best_distance)
        if distance < best_distance:
            best, best_distance = candidate, distance
    return best


def _edits(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance of ``a`` and ``b`` (``limit`` once it exceeds it)."""
    if abs(len(a) - len(b)) >= limit:
        return limit
    before: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], before[j - 2] + 1)
        if min(current) >= limit:
            return limit
        before, previous = previous, current
    return min(previous[-1], limit)


def coerce(partitions: PartitionSet, key: PartitionKey) -> PartitionKey:
    if isinstance(key, str) and not partitions.contains(key):
        return partitions.parse(key)
    return partitions.validate(key)


def ordered(owner: object, start: PartitionKey, end: PartitionKey) -> NoReturn:
    raise PartitionError(
        f"keys_between('{key_text(start, owner)}', '{key_text(end, owner)}') of "
        f"{set_text(owner)}: start is after end; swap them."
    )
