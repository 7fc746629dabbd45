"""Input values a continuation already has: no load for them.

When a step's ``finish_step`` claims the next step (a
:class:`~flowstone.records.Continuation`), the runner keeps, for that step only, the
encoded values it will read that are already in this process: the finished step's own
staged value (:attr:`~flowstone.records.StagedValue.encoded`) and those the store read in
the same transaction (:attr:`~flowstone.records.StepTransition.claimed_values`). The
continuation's input resolution takes them from here and the IO manager decodes them
(``decode_prefetched``) exactly as ``load`` would; anything not here is loaded as usual.
Entries are taken once; the cache is bounded, so a continuation that never runs here
(handed back to the broker) costs nothing but a slot until it is evicted.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowstone.engine.values import ValueLayer
    from flowstone.records import MaterializationRecord

__all__ = ["PrefetchCache"]

_MAX_ENTRIES = 256


class PrefetchCache:
    """Encoded values by location, each taken at most once (thread-safe, bounded)."""

    __slots__ = ("_lock", "_values")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: OrderedDict[str, Any] = OrderedDict()

    def put(self, values: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        items = values.items() if isinstance(values, Mapping) else values
        with self._lock:
            for location, encoded in items:
                if encoded is not None:
                    self._values[location] = encoded
            while len(self._values) > _MAX_ENTRIES:
                self._values.popitem(last=False)

    def take(self, values: ValueLayer, mats: Sequence[MaterializationRecord]) -> dict[str, Any]:
        """The decoded values of ``mats`` found here, by record id (the others: not here)."""
        if not self._values:
            return {}
        found: list[tuple[MaterializationRecord, Any]] = []
        with self._lock:
            for mat in mats:
                location = mat.location
                if mat.io_manager is not None and location is not None and location in self._values:
                    found.append((mat, self._values.pop(location)))
        out: dict[str, Any] = {}
        for mat, encoded in found:
            decoded, value = values.decode_prefetched(mat, encoded)
            if decoded:
                out[mat.id] = value
        return out
