"""Scatter defaults a new user relies on, on real Celery workers and Postgres: failing items
fail the asset (with their keys and errors shown), ``context.item`` names the real attribute,
``scatter status --json`` says ``null`` for no partition, and the barrier tables follow the
run store's schema."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from typing import Any

import asyncpg
import pytest
from conftest import SCHEMA_SPEC, SPEC, ScatterCluster, load_pipeline

from flowstone.partitions import encode_partition

pytestmark = pytest.mark.integration


def _fetch(database_url: str, sql: str, *args: object) -> list[Any]:
    async def go() -> list[Any]:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


def test_failing_items_fail_the_asset_with_their_keys_and_errors(
    cluster: ScatterCluster,
) -> None:
    cluster.start("w1")
    pipeline = load_pipeline(cluster.queue)
    result = pipeline.run("all_fail", partition="30-fail", timeout=120)
    assert result.status == "failed"
    step = next(s for s in result.steps if s.asset == "all_fail")
    assert step.state == "failed"
    text = str(step.error)
    assert "failure threshold of 0 failures (the default" in text
    # the first failed item's index, key and error (which item fails first is a race)
    shown = re.search(r"item (\d+) \(key (\d+)\): ConnectionError: host (\d+) refused", text)
    assert shown is not None and len(set(shown.groups())) == 1, text
    assert shown.group(0) in str(result.error)
    # the CLI shows it too
    out = subprocess.run(
        [sys.executable, "-m", "flowstone", "show", SPEC, result.run_id],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "FLOWSTONE_QUEUE": cluster.queue})
    assert shown.group(0) in out.stdout


def test_context_item_is_an_error_naming_scatter_item(cluster: ScatterCluster) -> None:
    cluster.start("w1")
    pipeline = load_pipeline(cluster.queue)
    result = pipeline.run("guessed_name", partition="5-guess", timeout=120)
    assert result.status == "failed"
    text = " ".join(str(s.error) for s in result.steps)
    assert "Context has no attribute 'item'" in text and "context.scatter_item" in text


def test_status_json_partition_is_null_when_unpartitioned(cluster: ScatterCluster) -> None:
    cluster.start("w1")
    pipeline = load_pipeline(cluster.queue)
    result = pipeline.run("unpartitioned", timeout=60, force=True)
    assert result.status == "succeeded", result.error
    assert result.value == ["A", "B", "C"]
    env = {**os.environ, "FLOWSTONE_QUEUE": cluster.queue}
    out = subprocess.run(
        [sys.executable, "-m", "flowstone", "scatter", "status", SPEC, result.run_id,
         "unpartitioned", "--json"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["partition"] is None and data["succeeded"] == 3
    keyed = pipeline.run("squares", partition="7-keyed", timeout=60)
    out = subprocess.run(
        [sys.executable, "-m", "flowstone", "scatter", "status", SPEC, keyed.run_id,
         "squares", "--partition", "7-keyed", "--json"], capture_output=True, text=True,
        timeout=60, env=env)
    assert json.loads(out.stdout)["partition"] == encode_partition("7-keyed")  # as `runs`
    # the same counts feed `flowstone runs` (ScatterProgress)
    coord = pipeline.scatter_coordinator
    counts = coord.progress(pipeline, keyed.run_id, "squares", encode_partition("7-keyed"))
    assert (counts.total, counts.succeeded, counts.failed, counts.pending) == (7, 7, 0, 0)
    assert coord.progress(pipeline, keyed.run_id, "squares", encode_partition("8")) is None


def test_barrier_tables_follow_the_run_store_schema(
    cluster: ScatterCluster, database_url: str
) -> None:
    schema = "fs_it_scatter_alt"
    cluster.start("w1", spec=SCHEMA_SPEC)
    pipeline = load_pipeline(cluster.queue, SCHEMA_SPEC)
    try:
        result = pipeline.run("cubes", partition="40", timeout=120)
        assert result.status == "succeeded", result.error
        assert result.value == [i**3 for i in range(40)]
        rows = _fetch(
            database_url,
            f"SELECT i.state FROM {schema}.scatter_items i JOIN {schema}.scatter_barriers b "
            "ON b.id = i.barrier_id WHERE b.run_id = $1", result.run_id)
        assert len(rows) == 40 and {r["state"] for r in rows} == {"succeeded"}
        assert _fetch(database_url, f"SELECT version_num FROM {schema}.flowstone_scatter_version"
                      )[0]["version_num"] == "scatter_0005"
        elsewhere = _fetch(
            database_url,
            "SELECT table_schema FROM information_schema.tables WHERE table_name = "
            "'scatter_barriers' AND table_schema <> $1", schema)
        for row in elsewhere:  # the default schema's tables (other tests) never saw this run
            other = row["table_schema"]
            assert _fetch(database_url, f"SELECT 1 FROM {other}.scatter_barriers WHERE "
                          "run_id = $1", result.run_id) == []
    finally:
        pipeline.close()
