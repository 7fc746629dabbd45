"""The public API is pinned; importing has no side effects; multiprocess mode is managed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import flowstone_observability
from flowstone.errors import UsageError


def test_public_api_is_pinned() -> None:
    assert flowstone_observability.__all__ == [
        "METRICS", "Check", "FreshnessCollector", "FreshnessReads", "HealthReport",
        "JsonFormatter", "MetricSpec", "MetricsServer", "OpenLineageObserver",
        "PrometheusObserver", "Serving", "StepLogContext", "__version__", "attach", "check",
        "configure_logging", "prepare_multiprocess_dir", "serve",
    ]
    for name in flowstone_observability.__all__:
        assert getattr(flowstone_observability, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        flowstone_observability.nothing


def test_importing_the_package_and_its_cli_imports_no_prometheus_client() -> None:
    """So `flowstone worker --metrics-port` can switch multiprocess mode on first."""
    code = ("import sys, flowstone_observability, flowstone_observability.cli; "
            "print('prometheus_client' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "False"


def test_multiprocess_dir_is_emptied_and_switched_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prometheus_client import values

    from flowstone_observability.serving import MULTIPROC_ENV, prepare_multiprocess_dir

    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # restored after the test
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))  # restored too
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "keep.txt").write_text("not ours")
    chosen = prepare_multiprocess_dir()
    assert chosen == tmp_path
    assert not (tmp_path / "counter_123.db").exists() and (tmp_path / "keep.txt").exists()
    assert values.ValueClass is not values.MutexValue  # file-backed values from now on
    not_a_dir = tmp_path / "keep.txt"
    with pytest.raises(UsageError, match="not a directory"):
        prepare_multiprocess_dir(not_a_dir)
