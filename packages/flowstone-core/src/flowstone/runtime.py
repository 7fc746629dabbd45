"""``Runtime``: everything running a pipeline needs, frozen, built once by the pipeline.

The engine, the executors and the coordinators take a runtime (or the
:class:`~flowstone.engine.StepRunner` holding one), never the whole
:class:`~flowstone.Pipeline`. The runtime's :class:`Capabilities` are the optional
protocols (:mod:`flowstone.protocols`) the configured plugins implement, checked once,
here: the engine reads them instead of probing objects for methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from flowstone.protocols import (
    BatchDispatch,
    BatchFinish,
    BatchLoading,
    BulkClaim,
    BulkRunCreation,
    BulkRunReads,
    ContinuationReads,
    DescribedStorage,
    Executor,
    HealthCheck,
    IOManager,
    ParallelCoordinator,
    PrefetchDecoding,
    ReferencedValues,
    RunStore,
    ScatterCoordinator,
    StagingStore,
    StoreClock,
    ValuePruning,
    ValueStaging,
    WorkerPresence,
)

if TYPE_CHECKING:
    from flowstone.dag import AssetGraph
    from flowstone.engine.values import ValueLayer
    from flowstone.events import Emitter
    from flowstone.resources import ResourceManager

__all__ = ["Capabilities", "Policies", "Runtime"]


@dataclass(frozen=True, slots=True)
class Policies:
    """The pipeline-wide settings the engine applies (see :class:`~flowstone.Pipeline`)."""

    lease_seconds: float = 300.0
    on_lineage_error: Literal["log", "fail"] = "log"
    route_retention: float = 30 * 86400.0
    value_retention: float = 86400.0


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Which optional protocols the pipeline's plugins implement (see
    :mod:`flowstone.protocols`), by IO manager name where it is about IO managers.

    ``staging`` holds only managers whose staged values the store accepts, and
    ``prefetch`` only those of them that decode what the store reads back.
    """

    batch_loading: Mapping[str, BatchLoading] = field(default_factory=dict)
    described: Mapping[str, DescribedStorage] = field(default_factory=dict)
    staging: Mapping[str, ValueStaging] = field(default_factory=dict)
    prefetch: Mapping[str, PrefetchDecoding] = field(default_factory=dict)
    continuation_reads: ContinuationReads | None = None
    batch_finish: BatchFinish | None = None
    bulk_claim: BulkClaim | None = None
    bulk_run_reads: BulkRunReads | None = None
    bulk_run_creation: BulkRunCreation | None = None
    batch_dispatch: BatchDispatch | None = None
    executor_health: HealthCheck | None = None
    worker_presence: WorkerPresence | None = None
    value_pruning: Mapping[str, ValuePruning] = field(default_factory=dict)
    referenced_values: ReferencedValues | None = None
    store_clock: StoreClock | None = None

    @classmethod
    def detect(
        cls, store: RunStore, io_managers: Mapping[str, IOManager], executor: Executor
    ) -> Capabilities:
        """Check every optional protocol once."""
        staging: dict[str, ValueStaging] = {}
        if isinstance(store, StagingStore):
            for name, manager in io_managers.items():
                if isinstance(manager, ValueStaging) and store.accepts_staging(
                    manager.staging_target
                ):
                    staging[name] = manager
        return cls(
            batch_loading={
                n: m for n, m in io_managers.items() if isinstance(m, BatchLoading)
            },
            described={
                n: m for n, m in io_managers.items() if isinstance(m, DescribedStorage)
            },
            staging=staging,
            prefetch={n: m for n, m in staging.items() if isinstance(m, PrefetchDecoding)},
            continuation_reads=store if isinstance(store, ContinuationReads) else None,
            batch_finish=store if isinstance(store, BatchFinish) else None,
            bulk_claim=store if isinstance(store, BulkClaim) else None,
            bulk_run_reads=store if isinstance(store, BulkRunReads) else None,
            bulk_run_creation=store if isinstance(store, BulkRunCreation) else None,
            batch_dispatch=executor if isinstance(executor, BatchDispatch) else None,
            executor_health=executor if isinstance(executor, HealthCheck) else None,
            worker_presence=executor if isinstance(executor, WorkerPresence) else None,
            value_pruning={
                n: m for n, m in io_managers.items() if isinstance(m, ValuePruning)
            },
            referenced_values=store if isinstance(store, ReferencedValues) else None,
            store_clock=store if isinstance(store, StoreClock) else None,
        )


@dataclass(frozen=True, slots=True)
class Runtime:
    """What running one pipeline needs; rebuilt (not mutated) when the executor changes.

    ``branch_index`` maps each parallel branch's assets to the parallel assets and
    branches they belong to (:func:`flowstone.engine.timeouts.branch_index`).
    ``store_url`` is the URL the store was built from, if any.
    """

    name: str
    graph: AssetGraph
    store: RunStore
    values: ValueLayer
    events: Emitter
    resources: ResourceManager
    policies: Policies
    capabilities: Capabilities
    executor: Executor
    scatter_coordinator: ScatterCoordinator
    parallel_coordinator: ParallelCoordinator
    branch_index: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    store_url: str | None = None
