"""FlowStone: asset-first data orchestration.

Write plain functions that each produce a named piece of data; FlowStone works out the
graph, runs what a partition needs, stores every value, records lineage, and pauses for
approvals or callbacks — in-process with no services, or on Celery + Postgres via plugins.

Example:
    >>> import flowstone as fs
    >>> @fs.asset
    ... def numbers():
    ...     return [1, 2, 3]
    >>> @fs.asset
    ... def total(numbers):
    ...     return sum(numbers)
    >>> fs.Pipeline("demo", [numbers, total], store="memory://").run("total").value
    6

Importing this package has no side effects: no environment reads, no connections, no
plugin scans. Configuration is resolved when a Pipeline is built.
"""

from flowstone import readers
from flowstone._version import __version__
from flowstone.asset import AssetDef, asset, router
from flowstone.backfill import BackfillResult
from flowstone.context import Context
from flowstone.daemon import Daemon
from flowstone.defaults.filesystem_io import FilesystemIOManager
from flowstone.defaults.inprocess_executor import InProcessExecutor
from flowstone.defaults.memory_io import MemoryIOManager
from flowstone.defaults.memory_store import MemoryRunStore
from flowstone.defaults.sqlite_store import SQLiteRunStore
from flowstone.errors import (
    ApprovalError,
    AssetFailedError,
    AssetTimeoutError,
    CancelledError,
    CycleError,
    DefinitionError,
    DependencyError,
    EncodingError,
    ExecutionError,
    FlowStoneError,
    PartitionError,
    PluginError,
    PluginLoadError,
    PluginNotFoundError,
    ResourceError,
    RunNotFoundError,
    ScatterThresholdError,
    SignalError,
    StorageError,
    UnsafeKeyError,
    UsageError,
    ValueNotFoundError,
)
from flowstone.events import Event
from flowstone.loading import load_pipeline
from flowstone.outcomes import Retry, SignalGate, Skip, WaitForApproval
from flowstone.parallel import BranchFailed, BranchSkipped, Parallel
from flowstone.partitions import (
    MAX_PARTITION_LENGTH,
    AllPartitions,
    DailyPartitions,
    HourlyPartitions,
    IdentityMapping,
    MultiPartitions,
    PartitionKey,
    PartitionMapping,
    PartitionSet,
    StaticPartitions,
    TimeWindowOffset,
    Unpartitioned,
    decode_partition,
    encode_partition,
    parse_partition,
)
from flowstone.pipeline import Pipeline
from flowstone.records import Approval, Gate, MaterializationRecord, RunRecord
from flowstone.resources import Resource
from flowstone.retry import RetryPolicy
from flowstone.runs import RunResult
from flowstone.scatter import Batch, Batching, ItemFailed, Scatter
from flowstone.schedules import Schedule, previous_day, previous_hour
from flowstone.sensors import RunRequest, Sensor, SensorContext, SensorResult, sensor

__all__ = [
    "MAX_PARTITION_LENGTH",
    "AllPartitions",
    "Approval",
    "ApprovalError",
    "AssetDef",
    "AssetFailedError",
    "AssetTimeoutError",
    "BackfillResult",
    "Batch",
    "Batching",
    "BranchFailed",
    "BranchSkipped",
    "CancelledError",
    "Context",
    "CycleError",
    "Daemon",
    "DailyPartitions",
    "DefinitionError",
    "DependencyError",
    "EncodingError",
    "Event",
    "ExecutionError",
    "FilesystemIOManager",
    "FlowStoneError",
    "Gate",
    "HourlyPartitions",
    "IdentityMapping",
    "InProcessExecutor",
    "ItemFailed",
    "MaterializationRecord",
    "MemoryIOManager",
    "MemoryRunStore",
    "MultiPartitions",
    "Parallel",
    "PartitionError",
    "PartitionKey",
    "PartitionMapping",
    "PartitionSet",
    "Pipeline",
    "PluginError",
    "PluginLoadError",
    "PluginNotFoundError",
    "Resource",
    "ResourceError",
    "Retry",
    "RetryPolicy",
    "RunNotFoundError",
    "RunRecord",
    "RunRequest",
    "RunResult",
    "SQLiteRunStore",
    "Scatter",
    "ScatterThresholdError",
    "Schedule",
    "Sensor",
    "SensorContext",
    "SensorResult",
    "SignalError",
    "SignalGate",
    "Skip",
    "StaticPartitions",
    "StorageError",
    "TimeWindowOffset",
    "Unpartitioned",
    "UnsafeKeyError",
    "UsageError",
    "ValueNotFoundError",
    "WaitForApproval",
    "__version__",
    "asset",
    "decode_partition",
    "encode_partition",
    "load_pipeline",
    "parse_partition",
    "previous_day",
    "previous_hour",
    "readers",
    "router",
    "sensor",
]
