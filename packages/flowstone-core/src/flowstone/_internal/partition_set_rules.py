"""Rules every partition set shares: the "not a partition" error, reading a key that may
be given as CLI text, and refusing a range whose start is after its end.

Internal helpers of :mod:`flowstone.partitions`; no public promise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from flowstone._internal.partition_codec import PartitionKey
from flowstone.errors import PartitionError

if TYPE_CHECKING:
    from flowstone.partitions import PartitionSet

__all__ = ["coerce", "ordered", "range_error"]


def range_error(owner: object, key: object, allowed: str, fix: str) -> PartitionError:
    return PartitionError(f"{key!r} is not a partition of {owner!r}: {allowed}. {fix}")


def coerce(partitions: PartitionSet, key: PartitionKey) -> PartitionKey:
    if isinstance(key, str) and not partitions.contains(key):
        return partitions.parse(key)
    return partitions.validate(key)


def ordered(owner: object, start: PartitionKey, end: PartitionKey) -> NoReturn:
    raise PartitionError(
        f"keys_between({start!r}, {end!r}) of {owner!r}: start is after end; swap them."
    )
