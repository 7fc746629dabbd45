"""FlowStone's errors: one tree, every one a real exception.

The whole hierarchy::

    FlowStoneError                      base of everything FlowStone raises
    ├── DefinitionError                 a pipeline or asset is declared wrongly (CLI exit 2)
    │   ├── DependencyError             unknown / duplicate / optional-dep mistakes
    │   ├── CycleError                  a dependency cycle; ``.path`` names it
    │   └── ResourceError               a required resource is missing or failed to build
    ├── PartitionError                  a partition key is invalid, unknown or too long
    ├── PluginError                     entry-point lookup problems
    │   ├── PluginNotFoundError         no plugin under that name (names the pip install)
    │   └── PluginLoadError             a plugin failed to import or has the wrong shape
    ├── StorageError                    an IO manager or run store failed
    │   ├── EncodingError               a value cannot be encoded; names asset and type
    │   ├── ValueNotFoundError          no stored value at that location
    │   └── UnsafeKeyError              a storage key would escape its prefix
    ├── ExecutionError                  something went wrong running a run
    │   ├── AssetFailedError            an asset raised; ``__cause__`` is the original
    │   ├── AssetTimeoutError           an asset ran longer than its ``timeout``
    │   ├── ScatterThresholdError       too many scatter items failed
    │   ├── RunNotFoundError            no run with that id
    │   └── CancelledError              the run was cancelled
    ├── ApprovalError                   approval not found / already decided
    ├── SignalError                     token unknown, expired or already used
    └── UsageError                      a public entry point got bad arguments (CLI exit 2)

Every error message says what is wrong, where, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "ApprovalError",
    "AssetFailedError",
    "AssetTimeoutError",
    "CancelledError",
    "CycleError",
    "DefinitionError",
    "DependencyError",
    "EncodingError",
    "ExecutionError",
    "FlowStoneError",
    "PartitionError",
    "PluginError",
    "PluginLoadError",
    "PluginNotFoundError",
    "ResourceError",
    "RunNotFoundError",
    "ScatterThresholdError",
    "SignalError",
    "StorageError",
    "UnsafeKeyError",
    "UsageError",
    "ValueNotFoundError",
]


class FlowStoneError(Exception):
    """Base class of every error FlowStone raises."""


class DefinitionError(FlowStoneError):
    """A pipeline or asset definition is invalid."""


class DependencyError(DefinitionError):
    """A dependency names an unknown asset, is duplicated, or is declared inconsistently."""


class CycleError(DefinitionError):
    """The dependency graph has a cycle.

    Attributes:
        path: the assets on the cycle, first one repeated at the end (``a -> b -> a``).
    """

    def __init__(self, path: list[str]) -> None:
        self.path = list(path)
        super().__init__(
            "dependency cycle: "
            + " -> ".join(self.path)
            + ". Break the cycle by removing one of these dependencies."
        )


class ResourceError(DefinitionError):
    """A resource is missing, or failed to build or tear down."""


class PartitionError(FlowStoneError, ValueError):
    """A partition key is invalid, outside its partition set, or too long."""


class PluginError(FlowStoneError):
    """A plugin could not be found or loaded."""


class PluginNotFoundError(PluginError, LookupError):
    """No plugin is registered under the requested name."""


class PluginLoadError(PluginError):
    """A plugin failed to import, or the loaded object has the wrong shape."""


class StorageError(FlowStoneError):
    """An IO manager or run store failed."""


class EncodingError(StorageError, TypeError):
    """A value cannot be encoded by the IO manager's codec. Nothing was written."""


class ValueNotFoundError(StorageError, LookupError):
    """No value is stored at the requested location."""


class UnsafeKeyError(StorageError, ValueError):
    """A storage key built from names/partitions would escape the IO manager's prefix."""


class ExecutionError(FlowStoneError):
    """Running a pipeline failed."""


class AssetFailedError(ExecutionError):
    """An asset raised. The original exception is ``__cause__``."""

    def __init__(self, message: str, *, asset: str | None = None) -> None:
        self.asset = asset
        super().__init__(message)


class AssetTimeoutError(ExecutionError, TimeoutError):
    """An asset ran longer than its ``timeout``."""


class ScatterThresholdError(ExecutionError):
    """More scatter items failed than the scatter's ``failure_threshold`` allows."""


class RunNotFoundError(ExecutionError, LookupError):
    """No run with the given id exists in the run store."""


class CancelledError(ExecutionError):
    """The run was cancelled."""


class ApprovalError(FlowStoneError):
    """An approval does not exist, or was already decided or expired."""


class SignalError(FlowStoneError):
    """A signal token is unknown, expired, or was already used."""


class UsageError(FlowStoneError, ValueError):
    """A public entry point was called with invalid arguments."""
