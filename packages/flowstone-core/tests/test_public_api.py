"""The public API is what ``flowstone/__init__.py`` exports; importing it does nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flowstone as fs

PUBLIC_NAMES = [
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
    "MAX_PARTITION_LENGTH",
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


def test_all_is_pinned() -> None:
    assert sorted(fs.__all__) == PUBLIC_NAMES
    assert len(set(fs.__all__)) == len(fs.__all__)  # no name listed twice
    for name in fs.__all__:
        assert getattr(fs, name) is not None, name


def test_design_contract_names_exist() -> None:
    # DESIGN.md section 7: names users and docs rely on
    for name in (
        "asset",
        "router",
        "Pipeline",
        "Scatter",
        "Batching",
        "Parallel",
        "BranchFailed",
        "WaitForApproval",
        "Skip",
        "Retry",
        "RetryPolicy",
        "readers",
        "load_pipeline",
    ):
        assert name in fs.__all__
    assert hasattr(fs.readers, "JsonLines")


_PROBE = textwrap.dedent(
    """
    import json, logging, os, sys, threading
    from collections.abc import MutableMapping

    class SpyEnviron(MutableMapping):
        def __init__(self, inner):
            self.inner, self.read = inner, []
        def __getitem__(self, key):
            self.read.append(key)
            return self.inner[key]
        def __setitem__(self, key, value):
            self.inner[key] = value
        def __delitem__(self, key):
            del self.inner[key]
        def __iter__(self):
            return iter(self.inner)
        def __len__(self):
            return len(self.inner)
        def copy(self):
            return dict(self.inner)

    spy = SpyEnviron(os.environ)
    os.environ = spy
    threads = threading.active_count()
    import flowstone
    import flowstone.readers, flowstone.registry, flowstone.pipeline, flowstone.daemon
    print(json.dumps({
        "env": [k for k in spy.read if k.startswith("FLOWSTONE")],
        "threads": threading.active_count() - threads,
        "handlers": len(logging.getLogger("flowstone").handlers),
        "root_handlers": len(logging.getLogger().handlers),
    }))
    """
)


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FLOWSTONE_HOME": str(tmp_path / "home"),
        "FLOWSTONE_DATABASE_URL": "postgresql://nobody@203.0.113.1:1/never",
        "FLOWSTONE_EXECUTOR": "does-not-exist",
        "FLOWSTONE_BROKER_URL": "redis://203.0.113.1:1/0",
    }
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"env": [], "threads": 0, "handlers": 0, "root_handlers": 0}
    assert out.stderr == ""
    assert list(tmp_path.iterdir()) == []  # no .flowstone/, no files at all
