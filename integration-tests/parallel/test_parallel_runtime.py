"""Parallel branches on real Celery workers and Postgres: one join, exactly once."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery_it import Cluster, wait_for

from flowstone.loading import load_pipeline
from flowstone.records import StepOutcome, StepRecord
from flowstone.runs import wait_for_run
from flowstone.testing import ParkedExecutor

pytestmark = pytest.mark.integration
SPEC = f"{Path(__file__).parent / 'pipelines' / 'newsroom.py'}:pipeline"


@pytest.fixture
def load() -> Iterator[Callable[[], Any]]:
    """Load the pipeline file as a client would; every copy is closed after the test."""
    built: list[Any] = []

    def make() -> Any:
        built.append(load_pipeline(SPEC))
        return built[-1]

    yield make
    for pipeline in built:
        pipeline.close()


def joins(run_id: str, asset: str) -> int:
    from newsroom import join_count  # importable once the pipeline file is loaded

    return int(join_count(run_id, asset))


def key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_three_branches_join_once_with_the_expected_value(load: Any, cluster: Cluster) -> None:
    from flowstone_parallel import DurableParallelCoordinator, join_record

    pipeline = load()
    assert pipeline.executor.name == "celery"
    assert isinstance(pipeline.parallel_coordinator, DurableParallelCoordinator)
    city = key("ok")
    result = pipeline.run("briefing", city, timeout=60)
    assert result.status == "succeeded", result.error
    assert result.value == {"maps": f"map of {city}", "news": [f"headline in {city}"],
                            "weather": {"city": city, "high_c": 21}}
    assert joins(result.run_id, "briefing") == 1
    mats = {m.asset: m for m in pipeline.store.list_materializations(
        "it_parallel", run_id=result.run_id)}
    finals = {mats[a].id for a in ("generate_maps", "front_pages", "forecast")}
    assert finals <= set(mats["briefing"].upstream)  # lineage names every branch final
    record = join_record(pipeline.store, result.run_id, "briefing", city)
    assert record is not None and record.outcome == "joined" and record.repeats == 0


def test_many_parents_started_at_once_each_join_once(load: Any, cluster: Cluster) -> None:
    """``run_many``: forty parents' branches travel several to a message (steps of
    different runs together); every parent still joins once, with every branch."""
    pipeline = load()
    cities = [key("many") for _ in range(40)]
    results = pipeline.run_many("briefing", cities, timeout=120)
    assert [r.status for r in results] == ["succeeded"] * 40, [r.error for r in results]
    for city, result in zip(cities, results, strict=True):
        assert result.value["maps"] == f"map of {city}"
        assert joins(result.run_id, "briefing") == 1


@pytest.mark.parametrize(("asset", "prefix", "branch"), [
    ("strict_briefing", "fail-news", "news"),      # all_or_nothing: any branch is required
    ("briefing", "fail-weather", "weather"),       # partial: a required branch
])
def test_a_failing_required_branch_fails_the_parent(load: Any, cluster: Cluster, asset: str,
                                                    prefix: str, branch: str) -> None:
    pipeline = load()
    result = pipeline.run(asset, key(prefix), timeout=60)
    assert result.status == "failed"
    step = next(s for s in result.steps if s.asset == asset)
    assert step.state == "upstream_failed"
    assert f"required branch {branch!r} failed" in (step.error or "")
    assert joins(result.run_id, asset) == 0


def test_an_optional_branch_failure_joins_with_a_marker(load: Any, cluster: Cluster) -> None:
    pipeline = load()
    city = key("fail-news")
    result = pipeline.run("briefing", city, timeout=60)
    value = pipeline.get("briefing", city)
    assert value["news"].startswith("BranchFailed: ") and "no edition" in value["news"]
    assert value["maps"] == f"map of {city}"
    assert joins(result.run_id, "briefing") == 1


def test_racing_and_duplicated_branch_completions_join_once(load: Any, cluster: Cluster) -> None:
    """Every branch step delivered twice at once; completions race on Postgres; the join
    becomes ready in exactly one of them and runs once on the workers."""
    pipeline = load()
    celery_executor, parked = pipeline.executor, ParkedExecutor()
    pipeline.executor = parked
    try:
        run = pipeline.run("briefing", key("race"), wait=False)
        (city_step,) = parked.take()
        branches = pipeline.runner.run_step(run.run_id, city_step.asset, city_step.partition).steps
        assert sorted(s.asset for s in branches) == ["forecast", "front_pages", "generate_maps"]
        ready: list[StepRecord] = []
        lock, start = threading.Lock(), threading.Barrier(6)

        def deliver(step: StepRecord) -> None:
            start.wait()
            got = pipeline.runner.run_step(run.run_id, step.asset, step.partition).steps
            with lock:
                ready.extend(got)

        threads = [threading.Thread(target=deliver, args=(s,)) for s in branches for _ in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [s.asset for s in ready] == ["briefing"]  # ready exactly once
        # a completion redelivered after the fact changes nothing
        again = pipeline.store.finish_step(run.run_id, "forecast", run.partition or "",
                                           StepOutcome("succeeded"))
        assert not again.applied and again.ready == ()
        pipeline.executor = celery_executor
        pipeline.dispatch(run.run_id, ready * 3)  # and the join message itself, three times
        final = wait_for_run(pipeline.store, run.run_id, timeout=60)
    finally:
        pipeline.executor = celery_executor
    assert final.status == "succeeded"
    assert joins(run.run_id, "briefing") == 1
    assert len(pipeline.store.list_materializations(
        "it_parallel", asset="briefing", run_id=run.run_id)) == 1


def test_worker_killed_during_a_branch_the_join_still_happens_once(
    load: Any, own_cluster: Cluster,
) -> None:
    from flowstone_celery import CeleryExecutor, load_settings
    from flowstone_parallel import join_record

    pipeline = load()
    original = pipeline.executor
    pipeline.executor = CeleryExecutor(load_settings(queue=own_cluster.queue))
    try:
        victim = own_cluster.start("victim", concurrency=1, FLOWSTONE_PREFETCH="1")
        city = key("kill")
        run = pipeline.run("briefing", city, wait=False)
        marker = own_cluster.state_dir / f"{run.run_id}.1.maps"
        wait_for(marker.exists, what="the maps branch to start on the victim")
        # the news branch ran just before maps, in the same message; its finish waits up
        # to FLOWSTONE_FINISH_BATCH_SECONDS for a batch, then is recorded while maps runs.
        # Killed before that, news would run again only once its 4 s lease expired, past
        # its 1 s branch timeout: this test is about the maps branch, so kill after it
        recorded = {"front_pages", "forecast"}
        wait_for(lambda: recorded <= {s.asset for s in pipeline.store.list_steps(run.run_id)
                                      if s.state == "succeeded"},
                 what="the news and weather branches to be recorded")
        (maps_step,) = [s for s in pipeline.store.list_steps(run.run_id)
                        if s.asset == "generate_maps"]
        assert maps_step.state == "running"  # still in its 3 s sleep
        os.killpg(victim.pid, signal.SIGKILL)  # main process and pool, mid-branch
        victim.wait()
        own_cluster.start("survivor", concurrency=2)
        final = wait_for_run(pipeline.store, run.run_id, timeout=90)
    finally:
        pipeline.executor.close()
        pipeline.executor = original
    assert final.status == "succeeded", final.error
    assert pipeline.get("briefing", city)["maps"] == f"map of {city}"
    assert joins(run.run_id, "briefing") == 1
    (maps,) = pipeline.store.list_materializations("it_parallel", asset="generate_maps",
                                                   run_id=run.run_id)
    assert maps.attempt == 2  # the branch ran again elsewhere; recorded once
    record = join_record(pipeline.store, run.run_id, "briefing", city)
    assert record is not None and record.repeats == 0
    assert record.branch("maps").materialization_ids == (maps.id,)


def test_branch_timeout_is_enforced_by_the_sweeper(load: Any, cluster: Cluster) -> None:
    pipeline = load()
    city = key("stuck")
    result = pipeline.run("briefing", city, timeout=60)
    value = pipeline.get("briefing", city)
    assert "branch 'news' of 'briefing' timed out after 1s" in value["news"]
    assert value["weather"] == {"city": city, "high_c": 21}
    news = pipeline.store.get_step(result.run_id, "front_pages", city)
    assert news is not None and news.state == "failed"
    assert joins(result.run_id, "briefing") == 1
