"""Partitions: the key codec, partition sets, and partition mappings for dependencies.

A partition key is a ``str``, ``int``, ``date``, ``datetime`` or a tuple of those
(:data:`PartitionKey`). Stores and messages carry keys in their encoded form
(:func:`encode_partition`); assets see the typed key again. A partition set declares which
keys an asset has; a partition mapping says which upstream keys a downstream key needs.
See ``docs/partitions.md``.

The time-based sets live in :mod:`flowstone._internal.partition_time` and are re-exported
here; this is their public module.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Protocol, runtime_checkable

from flowstone._internal.partition_codec import (
    MAX_PARTITION_DEPTH,
    MAX_PARTITION_LENGTH,
    PartitionKey,
    check_key,
    decode_partition,
    encode_partition,
)
from flowstone._internal.partition_set_rules import (
    closest_text,
    coerce,
    key_text,
    ordered,
    range_error,
)
from flowstone._internal.partition_time import HOUR, DailyPartitions, HourlyPartitions
from flowstone.errors import PartitionError, UsageError

__all__ = [
    "MAX_PARTITION_DEPTH",
    "MAX_PARTITION_LENGTH",
    "AllPartitions",
    "DailyPartitions",
    "HourlyPartitions",
    "IdentityMapping",
    "MultiPartitions",
    "PartitionKey",
    "PartitionMapping",
    "PartitionSet",
    "StaticPartitions",
    "TimeWindowOffset",
    "Unpartitioned",
    "decode_partition",
    "encode_partition",
    "parse_partition",
]


@runtime_checkable
class PartitionSet(Protocol):
    """The keys an asset is partitioned by.

    ``keys_between`` takes keys, or CLI text that ``parse`` understands, and returns the
    keys from ``start`` to ``end`` inclusive in the set's order (used by backfills).
    """

    def keys(self, now: datetime | None = None) -> list[PartitionKey]: ...
    def contains(self, key: object) -> bool: ...
    def validate(self, key: object) -> PartitionKey: ...
    def parse(self, text: str) -> PartitionKey: ...
    def keys_between(self, start: PartitionKey, end: PartitionKey) -> list[PartitionKey]: ...


@runtime_checkable
class PartitionMapping(Protocol):
    """Which partitions of an upstream asset one downstream partition depends on."""

    def upstream_keys(
        self, key: PartitionKey | None, upstream: PartitionSet | None
    ) -> list[PartitionKey | None]: ...


def parse_partition(text: str, partitions: PartitionSet | None) -> PartitionKey:
    """Turn CLI text into a typed key.

    With a partition set the set's ``parse`` decides (``"2024-01-05"`` becomes a ``date``
    for a :class:`DailyPartitions`). Without one the text *is* the key, as a ``str``:
    ``"42"`` stays the string ``"42"``; nothing is guessed.

    Raises:
        PartitionError: the text is empty, too long, or not a key of ``partitions``.
    """
    if partitions is not None:
        return partitions.parse(text)
    if text == "":
        raise PartitionError(
            "an empty partition was given; omit the partition to run unpartitioned."
        )
    encode_partition(text)
    return text


@dataclass(frozen=True, slots=True, init=False)
class StaticPartitions:
    """A fixed list of ``str`` / ``int`` keys, in the order given.

    Example:
        >>> StaticPartitions(["us", "eu"]).parse("eu")
        'eu'
    """

    members: tuple[str | int, ...]
    _index: frozenset[str | int] = field(compare=False, repr=False)

    def __init__(self, keys: Sequence[str | int]) -> None:
        if isinstance(keys, str | bytes) or not isinstance(keys, Sequence):
            raise UsageError(
                f"StaticPartitions(keys={keys!r}): pass a list of str/int keys, e.g. ['us', 'eu']."
            )
        members: list[str | int] = []
        seen: set[str] = set()
        for key in keys:
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise UsageError(
                    f"StaticPartitions: key {key!r} is a {type(key).__qualname__}; "
                    "keys must be str or int."
                )
            encoded = encode_partition(key)
            if encoded in seen:
                raise UsageError(
                    f"StaticPartitions: key {key!r} is listed twice; list every key once."
                )
            seen.add(encoded)
            plain = check_key(key)
            assert isinstance(plain, str | int)
            members.append(plain)
        if not members:
            raise UsageError(
                "StaticPartitions needs at least one key, e.g. StaticPartitions(['us', 'eu'])."
            )
        object.__setattr__(self, "members", tuple(members))
        object.__setattr__(self, "_index", frozenset(members))

    def keys(self, now: datetime | None = None) -> list[PartitionKey]:
        """The keys, in the order given (``now`` is ignored)."""
        return list(self.members)

    def contains(self, key: object) -> bool:
        """Whether ``key`` is one of the keys (``1`` and ``"1"`` are different keys)."""
        return isinstance(key, str | int) and not isinstance(key, bool) and key in self._index

    def validate(self, key: object) -> PartitionKey:
        """Return ``key`` if it is one of the keys, else raise ``PartitionError``."""
        if self.contains(key):
            return check_key(key)
        shown = ", ".join(repr(k) for k in self.members[:20]) + (
            ", ..." if len(self.members) > 20 else ""
        )
        raise range_error(
            self, key, f"allowed keys are {shown}", "Use one of them.", self._nearest(key)
        )

    def _nearest(self, key: object) -> str | int | None:
        if isinstance(key, bool) or not isinstance(key, str | int):
            return None
        spelled = {key_text(m): m for m in self.members}
        close = closest_text(key_text(key), list(spelled))
        return spelled[close] if close is not None else None

    def parse(self, text: str) -> PartitionKey:
        """The key spelled ``text``: a str key as-is, an int key by its digits."""
        if text in self._index:
            return text
        digits = len(text) <= MAX_PARTITION_LENGTH and re.fullmatch(r"-?[0-9]+", text)
        if digits and int(text) in self._index:
            return int(text)
        return self.validate(text)

    def _position(self, key: PartitionKey) -> int:
        return next(n for n, member in enumerate(self.members) if member == key)

    def keys_between(self, start: PartitionKey, end: PartitionKey) -> list[PartitionKey]:
        """The keys from ``start`` to ``end`` inclusive, in the order given."""
        first, last = (self._position(coerce(self, key)) for key in (start, end))
        if last < first:
            ordered(self, start, end)
        return list(self.members[first : last + 1])


@dataclass(frozen=True, slots=True, init=False)
class MultiPartitions:
    """The cross product of named partition sets; keys are tuples in dimension order.

    ``parse`` accepts three spellings of a key: ``"2024-01-05|eu"`` (one part per
    dimension, each read by that dimension's ``parse``), a JSON array
    ``'["2024-01-05", "eu"]'`` (use it when a part contains ``|``; JSON numbers are taken
    as int keys), and the encoded form ``"(2024-01-05,eu)"`` as printed in logs.

    Example:
        >>> day, region = DailyPartitions("2024-01-01"), StaticPartitions(["eu"])
        >>> parts = MultiPartitions({"day": day, "region": region})
        >>> parts.parse("2024-01-05|eu")
        (datetime.date(2024, 1, 5), 'eu')
    """

    dimensions: tuple[tuple[str, PartitionSet], ...]

    def __init__(self, dimensions: Mapping[str, PartitionSet]) -> None:
        if not isinstance(dimensions, Mapping) or not dimensions:
            raise UsageError(
                "MultiPartitions needs a non-empty mapping of dimension name -> partition set, "
                "e.g. MultiPartitions({'day': DailyPartitions('2024-01-01'), 'region': ...})."
            )
        for name, parts in dimensions.items():
            if not isinstance(name, str) or not name:
                raise UsageError(
                    f"MultiPartitions: dimension name {name!r} must be a non-empty str."
                )
            if isinstance(parts, MultiPartitions) or not isinstance(parts, PartitionSet):
                raise UsageError(
                    f"MultiPartitions: dimension {name!r} is {parts!r}; use a Daily, Hourly or "
                    "Static partition set (flatten nested MultiPartitions into one)."
                )
        object.__setattr__(self, "dimensions", tuple(dimensions.items()))

    @property
    def dimension_names(self) -> tuple[str, ...]:
        """The dimension names, in key order."""
        return tuple(name for name, _ in self.dimensions)

    def keys(self, now: datetime | None = None) -> list[PartitionKey]:
        """Every combination, first dimension varying slowest."""
        return list(itertools.product(*(parts.keys(now) for _, parts in self.dimensions)))

    def contains(self, key: object) -> bool:
        """Whether ``key`` is a tuple whose every part is in its dimension."""
        return (
            isinstance(key, tuple)
            and len(key) == len(self.dimensions)
            and all(parts.contains(k) for (_, parts), k in zip(self.dimensions, key, strict=True))
        )

    def validate(self, key: object) -> PartitionKey:
        """Return ``key`` with every part normalised, or raise naming the bad dimension."""
        if not isinstance(key, tuple) or len(key) != len(self.dimensions):
            raise range_error(
                self,
                key,
                f"keys are tuples of {len(self.dimensions)} parts {self.dimension_names}",
                "Pass one part per dimension, in that order.",
            )
        checked: list[PartitionKey] = []
        for (name, parts), part in zip(self.dimensions, key, strict=True):
            try:
                checked.append(parts.validate(part))
            except PartitionError as exc:
                raise PartitionError(
                    f"dimension {name!r} of '{key_text(key, self)}': {exc}"
                ) from exc
        return tuple(checked)

    def parse(self, text: str) -> PartitionKey:
        """Parse ``"a|b"``, a JSON array, or the encoded ``"(a,b)"`` form (see the class doc)."""
        stripped = text.strip()
        if stripped.startswith("("):
            return self.validate(decode_partition(stripped))
        if stripped.startswith("["):
            try:
                items = json.loads(stripped)
            except ValueError as exc:
                raise PartitionError(f"{text!r} is not a valid JSON array: {exc}.") from exc
        else:
            items = text.split("|")
        if not isinstance(items, list) or len(items) != len(self.dimensions):
            raise PartitionError(
                f"{text!r} does not have one part per dimension {self.dimension_names}; write "
                "'a|b' or a JSON array such as '[\"a\", \"b\"]'."
            )
        return self.validate(
            tuple(
                self._part(name, parts, item)
                for (name, parts), item in zip(self.dimensions, items, strict=True)
            )
        )

    @staticmethod
    def _part(name: str, parts: PartitionSet, item: object) -> PartitionKey:
        try:
            return parts.parse(item) if isinstance(item, str) else parts.validate(item)
        except PartitionError as exc:
            raise PartitionError(f"dimension {name!r}: {exc}") from exc

    def keys_between(self, start: PartitionKey, end: PartitionKey) -> list[PartitionKey]:
        """Every combination of each dimension's ``start[i]``..``end[i]`` (a box, not a slice)."""
        first, last = coerce(self, start), coerce(self, end)
        assert isinstance(first, tuple) and isinstance(last, tuple)
        ranges = (
            parts.keys_between(a, b)
            for (_, parts), a, b in zip(self.dimensions, first, last, strict=True)
        )
        return list(itertools.product(*ranges))


@dataclass(frozen=True, slots=True)
class IdentityMapping:
    """The default: a downstream partition needs the same partition upstream."""

    def upstream_keys(
        self, key: PartitionKey | None, upstream: PartitionSet | None
    ) -> list[PartitionKey | None]:
        """``[key]``, validated against the upstream set when there is one."""
        if upstream is None:
            return [key]
        if key is None:
            raise PartitionError(
                f"an unpartitioned run needs a partitioned upstream ({upstream!r}); pass a "
                "partition, or depend on it with AllPartitions()."
            )
        return [upstream.validate(key)]


@dataclass(frozen=True, slots=True)
class TimeWindowOffset:
    """Depend on an earlier (or later) time window: ``-1`` is the previous day/hour.

    A ``date`` key moves by ``offset`` days, a ``datetime`` key by ``offset`` hours. When
    the shifted key falls outside the upstream set (the day before its ``start``), there
    is no upstream partition and the list is empty.
    """

    offset: int = -1

    def __post_init__(self) -> None:
        if isinstance(self.offset, bool) or not isinstance(self.offset, int):
            raise UsageError(
                f"TimeWindowOffset(offset={self.offset!r}): offset must be an int, e.g. -1."
            )

    def upstream_keys(
        self, key: PartitionKey | None, upstream: PartitionSet | None
    ) -> list[PartitionKey | None]:
        """The key shifted by ``offset`` windows, or ``[]`` if the upstream set lacks it."""
        if isinstance(key, datetime):
            shifted: PartitionKey = key + self.offset * HOUR
        elif isinstance(key, date):
            shifted = key + timedelta(days=self.offset)
        else:
            raise PartitionError(
                f"TimeWindowOffset needs a date or datetime partition key, got {key!r}; use it "
                "between assets partitioned by DailyPartitions or HourlyPartitions."
            )
        if upstream is None:
            return [shifted]
        if not isinstance(upstream, DailyPartitions | HourlyPartitions):
            raise PartitionError(
                f"TimeWindowOffset needs a Daily or Hourly upstream set, not {upstream!r}."
            )
        if upstream.contains(shifted):
            return [upstream.validate(shifted)]
        if isinstance(upstream, DailyPartitions) == isinstance(shifted, datetime):
            upstream.validate(shifted)  # a date/datetime mismatch: raises with the reason
        return []


@dataclass(frozen=True, slots=True)
class AllPartitions:
    """Depend on every partition of the upstream asset (e.g. a daily -> summary rollup)."""

    def upstream_keys(
        self, key: PartitionKey | None, upstream: PartitionSet | None
    ) -> list[PartitionKey | None]:
        """Every key of ``upstream`` at the current time."""
        if upstream is None:
            raise PartitionError(
                "AllPartitions() needs the upstream asset to declare a partition set; give it "
                "partitions=... (e.g. DailyPartitions('2024-01-01')) or use IdentityMapping()."
            )
        return list(upstream.keys())


@dataclass(frozen=True, slots=True)
class Unpartitioned:
    """The upstream asset is not partitioned: every downstream partition reads its one value."""

    def upstream_keys(
        self, key: PartitionKey | None, upstream: PartitionSet | None
    ) -> list[PartitionKey | None]:
        """Always ``[None]``."""
        return [None]
