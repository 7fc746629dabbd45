"""``ValueLayer``: every load, store, stage and batch load of asset values.

The runner, the resume paths (approve, signal, deferred completion) and the pipeline's
readers all go through it, so each value is stored at its attempt's own location, staged
when the store can write it in the step's own transaction (:class:`~flowstone.protocols.
ValueStaging`), loaded in one round trip per IO manager when it can
(:class:`~flowstone.protocols.BatchLoading`), and reported as ``io.stored`` /
``io.loaded`` events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowstone.errors import DefinitionError, UnsafeKeyError, ValueNotFoundError
from flowstone.protocols import IOManager, StorageKey
from flowstone.records import MaterializationRecord, StagedValue

if TYPE_CHECKING:
    from flowstone.events import Emitter
    from flowstone.runtime import Capabilities

__all__ = ["StoredValue", "ValueLayer"]


@dataclass(frozen=True, slots=True)
class StoredValue:
    """Where a value went: its IO manager's name and location; ``staged`` holds it when
    the store writes it with the step's record (nothing is written yet then);
    ``described``: what a :class:`~flowstone.protocols.DescribedStorage` manager said about
    it (recorded in the materialization's metadata)."""

    io_manager: str
    location: str
    staged: tuple[StagedValue, ...] = ()
    described: Mapping[str, Any] | None = None


class ValueLayer:
    """The IO managers of one pipeline, and the one way values reach them."""

    __slots__ = ("_caps", "_events", "_managers", "default")

    def __init__(
        self,
        managers: Mapping[str, IOManager],
        capabilities: Capabilities,
        events: Emitter,
        *,
        default: str = "default",
    ) -> None:
        self._managers = dict(managers)
        self._caps = capabilities
        self._events = events
        self.default = default

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._managers)

    def manager(self, name: str) -> IOManager:
        try:
            return self._managers[name]
        except KeyError:
            raise DefinitionError(
                f"no IO manager {name!r} in pipeline {self._events.pipeline!r}; declared: "
                f"{sorted(self._managers)}"
            ) from None

    # --- writing -----------------------------------------------------------------------
    def store(
        self, io_name: str | None, key: StorageKey, value: object, *, stage: bool = True
    ) -> StoredValue:
        """Store ``value`` with ``io_name`` (None: the default manager), or, with ``stage``
        and a manager whose values the store writes itself, stage it for ``finish_step``.

        Raises:
            EncodingError: the value cannot be encoded (nothing is written).
        """
        name = io_name or self.default
        stager = self._caps.staging.get(name) if stage else None
        describer = self._caps.described.get(name)
        if stager is not None:
            staged = stager.stage(key, value)
            result = StoredValue(name, staged.location, (staged,))
        elif describer is not None:
            location, described = describer.store_described(key, value)
            result = StoredValue(name, location, described=dict(described))
        else:
            result = StoredValue(name, self.manager(name).store(key, value))
        if self._events:
            self._events.emit(
                "io.stored", key.run_id, key.asset, key.partition,
                {"io_manager": name, "location": result.location, "staged": bool(result.staged)},
            )  # fmt: skip
        return result

    def delete(self, io_name: str, location: str) -> None:
        self.manager(io_name).delete(location)

    # --- reading -----------------------------------------------------------------------
    def load(self, mat: MaterializationRecord) -> Any:
        """The value ``mat`` points at.

        Raises:
            ValueNotFoundError: no value recorded, or it is gone (the message says how to
                recover).
        """
        value = self._load_one(mat)
        if self._events:
            self._loaded(mat.run_id, mat.asset, mat.partition, str(mat.io_manager), 1)
        return value

    def _load_one(self, mat: MaterializationRecord) -> Any:
        if mat.location is None or mat.io_manager is None:
            raise ValueNotFoundError(
                f"materialization {mat.id} of {mat.asset!r} ({mat.state}) has no stored value"
            )
        manager = self.manager(mat.io_manager)
        try:
            return manager.load(mat.location)
        except (UnsafeKeyError, ValueNotFoundError) as exc:
            raise ValueNotFoundError(
                f"cannot load {mat.asset!r} (materialization {mat.id}, run {mat.run_id}) from "
                f"{mat.location!r} with IO manager {mat.io_manager!r} ({manager!r}): {exc}. If "
                "the pipeline's io_managers changed since it was stored, configure the old "
                "manager under that name again, or re-run with force=True"
            ) from exc

    def load_many(self, mats: Sequence[MaterializationRecord]) -> list[Any]:
        """The values of ``mats``, in order: one ``load_many`` per IO manager that has it
        (one round trip for a step's inputs), ``load`` per value otherwise."""
        by_manager: dict[str, list[int]] = {}
        for i, mat in enumerate(mats):
            if mat.location is not None and mat.io_manager is not None:
                by_manager.setdefault(mat.io_manager, []).append(i)
        out: list[Any] = [None] * len(mats)
        batched: set[int] = set()
        for name, idx in by_manager.items():
            loader = self._caps.batch_loading.get(name)
            if loader is None or len(idx) < 2:
                continue
            try:
                values = loader.load_many([str(mats[i].location) for i in idx])
            except (UnsafeKeyError, ValueNotFoundError):
                continue  # loaded one by one below, so the error names the record
            for i, value in zip(idx, values, strict=True):
                out[i] = value
            batched.update(idx)
        for i, mat in enumerate(mats):
            if i not in batched:
                out[i] = self._load_one(mat)
        if self._events:
            for name, idx in by_manager.items():
                first = mats[idx[0]]
                self._loaded(first.run_id, first.asset, first.partition, name, len(idx))
        return out

    def _loaded(self, run_id: str, asset: str, partition: str, name: str, count: int) -> None:
        self._events.emit(
            "io.loaded", run_id, asset, partition, {"io_manager": name, "count": count}
        )

    # --- continuations ----------------------------------------------------------------
    def prefetch_sources(self) -> dict[str, str]:
        """Where a :class:`~flowstone.protocols.ContinuationReads` store may read a
        continuation's input values, by IO manager name (managers that know none yet,
        e.g. before their table exists, are left out)."""
        return {
            name: source
            for name, manager in self._caps.prefetch.items()
            if (source := manager.prefetch_source)
        }

    def decode_prefetched(self, mat: MaterializationRecord, encoded: object) -> tuple[bool, Any]:
        """``(True, value)`` for a value the store (or this process) sent along encoded;
        ``(False, None)`` when ``mat``'s manager cannot decode it (then load it)."""
        decoder = self._caps.prefetch.get(str(mat.io_manager))
        if decoder is None or mat.location is None:
            return False, None
        return True, decoder.decode_prefetched(mat.location, encoded)
