"""``pipeline.lineage``: what produced a value and what was produced from it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from flowstone.dag import AssetGraph
from flowstone.errors import ValueNotFoundError
from flowstone.partitions import PartitionKey, encode_partition
from flowstone.records import MaterializationRecord
from flowstone.run_store import MaterializationLog

__all__ = ["Lineage", "LineageSource"]


class LineageSource(Protocol):
    """What lineage queries read (a :class:`~flowstone.Pipeline` has it): the pipeline's
    name, its graph, and the materialization log of its store."""

    @property
    def name(self) -> str: ...

    @property
    def dag(self) -> AssetGraph: ...

    @property
    def store(self) -> MaterializationLog: ...


class Lineage:
    """Lineage queries over the latest materialization of an asset/partition."""

    __slots__ = ("_p",)

    def __init__(self, pipeline: LineageSource) -> None:
        self._p = pipeline

    def _latest(self, asset: str, partition: PartitionKey | None) -> MaterializationRecord:
        a = self._p.dag[asset]
        mat = self._p.store.find_materialization(self._p.name, a.name, encode_partition(partition))
        if mat is None:
            raise ValueNotFoundError(
                f"asset {asset!r} has no materialization for partition "
                f"{encode_partition(partition) or 'none'}; run it first"
            )
        return mat

    def upstream(
        self, asset: str, partition: PartitionKey | None = None, *, recursive: bool = False
    ) -> list[MaterializationRecord]:
        """The materializations the latest value of ``asset`` was computed from."""
        return self._walk(self._latest(asset, partition), self._p.store.upstream, recursive)

    def downstream(
        self, asset: str, partition: PartitionKey | None = None, *, recursive: bool = False
    ) -> list[MaterializationRecord]:
        """The materializations computed from the latest value of ``asset``."""
        return self._walk(self._latest(asset, partition), self._p.store.downstream, recursive)

    @staticmethod
    def _walk(
        start: MaterializationRecord,
        step: Callable[[str], list[MaterializationRecord]],
        recursive: bool,
    ) -> list[MaterializationRecord]:
        seen: dict[str, MaterializationRecord] = {}
        todo = list(step(start.id))
        while todo:
            m = todo.pop(0)
            if m.id in seen:
                continue
            seen[m.id] = m
            if recursive:
                todo.extend(step(m.id))
        return list(seen.values())
