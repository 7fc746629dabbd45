"""On PostgreSQL, as on the memory and SQLite stores (packages/flowstone-core/tests/
test_run_outcome.py): a run whose optional parallel branch failed but whose join ran, and a
scatter under its failure threshold, succeed with recorded partial failures; a failed
required branch fails the run (issue 14 item 6)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import flowstone as fs

pytestmark = pytest.mark.integration


@pytest.fixture
def make(migrated_url: str) -> Iterator[Any]:
    built: list[fs.Pipeline] = []

    def build(assets: list[fs.AssetDef]) -> fs.Pipeline:
        pipeline = fs.Pipeline("partial_runs", assets, store=migrated_url, executor="inprocess")
        built.append(pipeline)
        return pipeline

    yield build
    for pipeline in built:
        pipeline.close()


def _newsroom(required: tuple[str, ...] = ()) -> list[fs.AssetDef]:
    @fs.asset
    def generate_maps() -> str:
        return "maps"

    @fs.asset
    def forecast() -> str:
        raise RuntimeError("weather service unavailable")

    @fs.asset(parallel=fs.Parallel(branches={"maps": "generate_maps", "weather": "forecast"},
                                   mode="partial", required=required))
    def enrich(branches: dict[str, Any]) -> list[str]:
        return sorted(n for n, v in branches.items() if not isinstance(v, fs.BranchFailed))

    return [generate_maps, forecast, enrich]


def test_the_join_ran_so_the_run_succeeded_with_a_partial_failure(make: Any) -> None:
    result = make(_newsroom()).run("enrich", force=True)
    assert (result.status, result.stored_status) == ("succeeded", "failed")
    assert [f.asset for f in result.partial_failures] == ["forecast"]
    assert result.value == ["maps"]


def test_a_failed_required_branch_fails_the_run(make: Any) -> None:
    result = make(_newsroom(required=("weather",))).run("enrich", force=True)
    assert result.status == "failed" and result.partial_failures == ()


def test_a_scatter_with_tolerated_item_failures_records_them(make: Any) -> None:
    @fs.asset
    def hosts() -> list[str]:
        return [f"db{i}" for i in range(10)]

    @fs.asset(scatter=fs.Scatter(items=lambda hosts: hosts, failure_threshold=0.5))
    def ping(context: fs.Context, hosts: list[str]) -> str:
        if context.scatter_item in ("db3", "db7"):
            raise ConnectionError(f"{context.scatter_item} is down")
        return "ok"

    result = make([hosts, ping]).run("ping", force=True)
    assert result.status == "succeeded"
    [failure] = result.partial_failures
    assert failure.failed_items == 2 and "2 of 10 items failed" in failure.error
