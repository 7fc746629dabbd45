"""DurableParallelCoordinator: the in-process join semantics, plus one durable join record."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import PipelineFactory

import flowstone as fs
from flowstone.engine.inputs import DepOutcome
from flowstone.engine.requests import ParallelRequest
from flowstone_parallel import METADATA_KEY, DurableParallelCoordinator, join_record


def newsroom(*, mode: str = "all_or_nothing", fail: str = "", required: tuple[str, ...] = (),
             joins: list[dict[str, Any]] | None = None) -> list[fs.AssetDef]:
    @fs.asset
    def city() -> str:
        return "Lyon"

    def branch(name: str) -> fs.AssetDef:
        def fn(city: str) -> str:
            if name == fail:
                raise RuntimeError(f"{name} service unavailable")
            return f"{name} of {city}"

        fn.__name__ = name
        return fs.asset(fn)

    @fs.asset(parallel=fs.Parallel(
        branches={"maps": "generate_maps", "news": "front_pages", "weather": "forecast"},
        mode=mode, required=required))  # type: ignore[arg-type]
    def enrich(branches: dict[str, Any], city: str) -> dict[str, Any]:
        if joins is not None:
            joins.append(dict(branches))
        return {"city": city, **branches}

    return [city, branch("generate_maps"), branch("front_pages"), branch("forecast"), enrich]


def test_three_branches_join_once_and_the_join_is_recorded(make_pipeline: PipelineFactory) -> None:
    joins: list[dict[str, Any]] = []
    p = make_pipeline(newsroom(joins=joins))
    assert isinstance(p.parallel_coordinator, DurableParallelCoordinator)
    result = p.run("enrich")
    assert result.value == {"city": "Lyon", "maps": "generate_maps of Lyon",
                            "news": "front_pages of Lyon", "weather": "forecast of Lyon"}
    assert len(joins) == 1
    mats = {m.asset: m for m in result.materializations}
    record = join_record(p.store, result.run_id, "enrich")
    assert record is not None and record.outcome == "joined" and record.repeats == 0
    assert [(b.branch, b.state) for b in record.branches] == [
        ("maps", "succeeded"), ("news", "succeeded"), ("weather", "succeeded")]
    assert record.branch("news").materialization_ids == (mats["front_pages"].id,)
    # lineage of the joined asset includes every branch final's materialization
    finals = {mats[a].id for a in ("generate_maps", "front_pages", "forecast")}
    assert finals <= set(mats["enrich"].upstream)


@pytest.mark.parametrize("mode", ["all_or_nothing", "partial"])
def test_a_failing_required_branch_fails_the_parent(make_pipeline: PipelineFactory,
                                                    mode: str) -> None:
    joins: list[dict[str, Any]] = []
    p = make_pipeline(newsroom(mode=mode, fail="forecast", required=("weather",), joins=joins))
    result = p.run("enrich")
    assert result.status == "failed" and joins == []
    enrich = next(s for s in result.steps if s.asset == "enrich")
    assert enrich.state == "upstream_failed"
    assert "required branch 'weather' failed" in (enrich.error or "")
    record = join_record(p.store, result.run_id, "enrich")
    assert record is not None and record.outcome == "failed" and record.mode == mode
    assert "forecast service unavailable" in record.branch("weather").detail


def test_an_optional_branch_failure_joins_with_a_marker(make_pipeline: PipelineFactory) -> None:
    p = make_pipeline(newsroom(mode="partial", fail="front_pages", required=("maps", "weather")))
    result = p.run("enrich")
    value = p.get("enrich")
    assert isinstance(value["news"], fs.BranchFailed)
    assert "front_pages service unavailable" in value["news"].error
    assert value["maps"] == "generate_maps of Lyon"
    record = join_record(p.store, result.run_id, "enrich")
    assert record is not None and record.outcome == "joined"
    news = record.branch("news")
    failed_mat = p.store.get_materialization(news.materialization_ids[0])
    assert news.state == "failed" and failed_mat is not None and failed_mat.state == "failed"


def test_a_repeated_join_keeps_its_first_record(make_pipeline: PipelineFactory) -> None:
    """A join step attempted again (its worker died mid-join) is noted in the audit log;
    its record is the one finish_step committed with the value, and stays."""
    p = make_pipeline(newsroom())
    result = p.run("enrich")
    first = join_record(p.store, result.run_id, "enrich")
    assert first is not None and first.repeats == 0
    again = ParallelRequest(p.runtime, p.dag["enrich"], result.run_id, "", {
        "maps": DepOutcome("succeeded", "m"), "news": DepOutcome("succeeded", "n"),
        "weather": DepOutcome("succeeded", "w")}, attempt=2)
    assert p.parallel_coordinator.branch_results(again) == {"maps": "m", "news": "n",
                                                            "weather": "w"}
    # the second execution's record rides on a finish_step that is not applied
    step = p.store.get_step(result.run_id, "enrich", "")
    assert step is not None and step.state == "succeeded"
    assert again.metadata[METADATA_KEY]["outcome"] == "joined"
    record = join_record(p.store, result.run_id, "enrich")
    assert record is not None
    assert record.repeats == 1
    assert record.branches == first.branches and record.recorded_at == first.recorded_at
    mat = p.store.get_materialization(step.materialization_id or "")
    assert mat is not None and mat.metadata[METADATA_KEY] == first.to_dict()


def test_an_unselected_routed_branch_is_skipped(make_pipeline: PipelineFactory) -> None:
    @fs.asset
    def article() -> str:
        return "fr"

    @fs.router(branches=["translate", "passthrough"])
    def needs_translation(article: str) -> str:
        return "passthrough" if article == "en" else "translate"

    @fs.asset(routed_from="needs_translation")
    def translate(article: str) -> str:
        return "translated"

    @fs.asset(routed_from="needs_translation")
    def passthrough(article: str) -> str:
        return "as is"

    @fs.asset(parallel=fs.Parallel(branches={"tr": "translate", "pt": "passthrough"},
                                   mode="partial"))
    def publish(branches: dict[str, Any]) -> dict[str, Any]:
        return dict(branches)

    p = make_pipeline([article, needs_translation, translate, passthrough, publish])
    result = p.run("publish")
    assert result.value["tr"] == "translated"
    assert isinstance(result.value["pt"], fs.BranchSkipped)
    record = join_record(p.store, result.run_id, "publish")
    assert record is not None and record.branch("pt").state == "skipped"
    assert record.branch("pt").materialization_ids == ()


def test_scatter_final_on_partitions(make_pipeline: PipelineFactory) -> None:
    regions = fs.StaticPartitions(["eu", "us"])

    @fs.asset(partitions=regions)
    def orders(context: fs.Context) -> list[int]:
        return [1, 2, 3] if context.partition == "eu" else [10, 20]

    @fs.asset(partitions=regions, scatter=fs.Scatter(items=lambda orders: orders))
    def priced(context: fs.Context, orders: list[int]) -> int:
        return int(context.scatter_item) * 2

    @fs.asset(partitions=regions)
    def counted(orders: list[int]) -> int:
        return len(orders)

    @fs.asset(partitions=regions,
              parallel=fs.Parallel(branches={"price": "priced", "count": "counted"}))
    def summary(branches: dict[str, Any]) -> dict[str, Any]:
        return dict(branches)

    p = make_pipeline([orders, priced, counted, summary])
    assert p.run("summary", "eu").value == {"price": [2, 4, 6], "count": 3}
    us = p.run("summary", "us")
    assert us.value == {"price": [20, 40], "count": 2}
    record = join_record(p.store, us.run_id, "summary", "us")
    assert record is not None and record.partition == "us"
    assert join_record(p.store, us.run_id, "summary", "eu") is None


def test_a_timed_out_optional_branch_reaches_the_join_as_failed(
    make_pipeline: PipelineFactory,
) -> None:
    import threading

    release = threading.Event()

    @fs.asset
    def maps() -> str:
        return "tiles"

    @fs.asset
    def news() -> str:
        release.wait(5)
        return "late"

    @fs.asset(parallel=fs.Parallel(branches={"maps": "maps", "news": "news"}, mode="partial",
                                   required=["maps"], branch_timeout={"news": 0.2}))
    def front(branches: dict[str, Any]) -> dict[str, Any]:
        return dict(branches)

    p = make_pipeline([maps, news, front])
    try:
        result = p.run("front")
    finally:
        release.set()
    assert result.value["maps"] == "tiles"
    assert "timed out after 0.2s" in result.value["news"].error
    record = join_record(p.store, result.run_id, "front")
    assert record is not None and record.branch("news").state == "failed"


def test_the_celery_executor_uses_this_coordinator(registry: Any) -> None:
    pytest.importorskip("flowstone_celery")
    p = fs.Pipeline("par", newsroom(), store="memory://", registry=registry,
                    executor="celery")
    try:
        assert p.parallel_coordinator.name == "celery"
        assert isinstance(p.parallel_coordinator, DurableParallelCoordinator)
    finally:
        p.close()
