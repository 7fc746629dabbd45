"""``pipeline.lineage``: what produced a value and what was produced from it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowstone.errors import ValueNotFoundError
from flowstone.partitions import PartitionKey, encode_partition
from flowstone.records import MaterializationRecord

if TYPE_CHECKING:
    from flowstone.pipeline import Pipeline

__all__ = ["Lineage"]


class Lineage:
    """Lineage queries over the latest materialization of an asset/partition."""

    __slots__ = ("_p",)

    def __init__(self, pipeline: Pipeline) -> None:
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
    def _walk(start: MaterializationRecord, step, recursive: bool) -> list[MaterializationRecord]:  # type: ignore[no-untyped-def]
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
