"""``flowstone runs`` on a run in the middle of a scatter on the workers: ``running``, with
the scatter's progress, not ``waiting`` (which users read as "needs a human")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from conftest import SPEC, ScatterCluster, load_pipeline

from flowstone.partitions import encode_partition

pytestmark = pytest.mark.integration


def runs(queue: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "flowstone", "runs", SPEC, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FLOWSTONE_QUEUE": queue},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if "--json" in args else done.stdout


def test_a_run_mid_scatter_is_running_with_its_progress(cluster: ScatterCluster) -> None:
    cluster.start("w1", concurrency=2)
    pipeline = load_pipeline(cluster.queue)
    try:
        check_progress(pipeline, cluster.queue)
    finally:
        pipeline.close()


def check_progress(pipeline: Any, queue: str) -> None:
    key = f"80-progress-{uuid.uuid4().hex[:6]}"  # 80 items at 20/s: about four seconds
    started = pipeline.run("limited", partition=key, wait=False)
    seen: dict[str, Any] | None = None
    deadline = time.monotonic() + 60
    while seen is None and time.monotonic() < deadline:
        for run in runs(queue, "--status", "running", "--json")["runs"]:
            scatters = run.get("scatters") or []
            if run["run_id"] == started.run_id and scatters and scatters[0].get("total"):
                seen = run
        time.sleep(0.2)
    assert seen is not None, "the run never showed as running with scatter progress"
    assert seen["stored_status"] == "waiting"
    [counts] = seen["scatters"]
    assert counts["asset"] == "limited" and counts["partition"] == encode_partition(key)
    assert counts["total"] == 80
    assert counts["succeeded"] + counts["failed"] + counts["running"] + counts["pending"] == 80
    waiting = runs(queue, "--status", "waiting", "--json")["runs"]
    assert started.run_id not in {r["run_id"] for r in waiting}
    [done] = pipeline.wait(started.run_id, timeout=120)
    assert done.status == "succeeded", done.error
