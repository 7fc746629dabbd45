"""The part of :class:`~flowstone.Pipeline` that reads asset values and their state."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from flowstone.engine.plan import validate_key
from flowstone.errors import ValueNotFoundError
from flowstone.partitions import PartitionKey, encode_partition
from flowstone.records import MaterializationRecord

if TYPE_CHECKING:
    from flowstone.dag import AssetGraph
    from flowstone.protocols import RunStore
    from flowstone.runtime import Runtime

__all__ = ["ValueReads"]


class ValueReads:
    """``get``, ``exists``, ``status``, ``invalidate``, loading records, ``graph``."""

    name: str
    dag: AssetGraph
    store: RunStore
    runtime: Runtime

    def _latest(self, asset: str, partition: PartitionKey | None) -> MaterializationRecord | None:
        a = self.dag[asset]
        enc = encode_partition(validate_key(a, partition) if partition is not None else None)
        return self.store.find_materialization(self.name, a.name, enc)

    def get(self, asset: str, partition: PartitionKey | None = None) -> Any:
        """The latest value of ``asset`` for ``partition``."""
        mat = self._latest(asset, partition)
        if mat is None:
            raise ValueNotFoundError(
                f"asset {asset!r} has no materialization for partition "
                f"{encode_partition(partition) or 'none'}; run it first: pipeline.run({asset!r})"
            )
        return self.load_materialization(mat)

    def exists(self, asset: str, partition: PartitionKey | None = None) -> bool:
        return self._latest(asset, partition) is not None

    def status(self, asset: str, partition: PartitionKey | None = None) -> str | None:
        """State of the newest materialization (``succeeded``, ``failed``, ...) or None."""
        a = self.dag[asset]
        enc = encode_partition(partition)
        recs = self.store.list_materializations(self.name, asset=a.name, partition=enc, limit=1)
        return recs[0].state if recs else None

    def invalidate(
        self, asset: str, partition: PartitionKey | None = None, *, all_partitions: bool = False
    ) -> int:
        """Stop reusing ``asset``'s values (one partition, or every one); returns how many."""
        a = self.dag[asset]
        enc = None if all_partitions else encode_partition(partition)
        return self.store.invalidate(self.name, a.name, enc)

    def load_materialization(self, mat: MaterializationRecord) -> Any:
        """The value ``mat`` points at (see :meth:`ValueLayer.load`)."""
        return self.runtime.values.load(mat)

    def load_materializations(self, mats: Sequence[MaterializationRecord]) -> list[Any]:
        """The values of ``mats``, in order, batched per IO manager where it can."""
        return self.runtime.values.load_many(mats)

    def graph(self, format: Literal["ascii", "mermaid", "dot"] = "ascii") -> str:
        return self.dag.render(format)

