"""Running pipelines end to end: values, reuse, force, invalidation, results and events."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from conftest import Counter, PipelineFactory, Recorder

import flowstone as fs


def _sales(counter: Counter) -> list[fs.AssetDef]:
    @fs.asset
    def orders() -> list[dict[str, Any]]:
        counter.hit("orders")
        return [{"id": 1, "total": 40}, {"id": 2, "total": 250}, {"id": 3, "total": 10}]

    @fs.asset
    def revenue(orders: list[dict[str, Any]]) -> int:
        counter.hit("revenue")
        return sum(o["total"] for o in orders)

    @fs.asset
    def order_count(orders: list[dict[str, Any]]) -> int:
        counter.hit("order_count")
        return len(orders)

    @fs.asset
    def report(context: fs.Context, revenue: int, order_count: int) -> dict[str, Any]:
        counter.hit("report")
        return {"revenue": revenue, "orders": order_count, "run": context.run_id}

    return [orders, revenue, order_count, report]


def test_run_computes_target_and_its_upstream(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    p = make_pipeline(_sales(counter))
    result = p.run("report")
    assert result.status == "succeeded" and result.ok
    assert result.value == {"revenue": 300, "orders": 3, "run": result.run_id}
    assert p.get("revenue") == 300
    assert p.exists("report") and p.status("report") == "succeeded"
    assert counter.calls == {"orders": 1, "revenue": 1, "order_count": 1, "report": 1}


def test_second_run_reuses_and_force_recomputes(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    p = make_pipeline(_sales(counter))
    first = p.run("report")
    second = p.run("report")
    assert second.status == "succeeded" and second.run_id != first.run_id
    assert counter.total() == 4  # nothing recomputed
    assert second.value["run"] == first.run_id  # the reused value
    reused = [m for m in second.to_dict()["materializations"] if m["reused"]]
    assert [m["asset"] for m in reused] == ["report"]

    forced = p.run("report", force=True)
    assert forced.value["run"] == forced.run_id
    assert counter.calls == {"orders": 2, "revenue": 2, "order_count": 2, "report": 2}


def test_invalidate_stops_reuse_of_that_asset_only(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    p = make_pipeline(_sales(counter))
    p.run("report")
    assert p.invalidate("report") == 1
    assert not p.exists("report")
    assert p.run("report").status == "succeeded"
    assert counter.calls["report"] == 2 and counter.calls["orders"] == 1


def test_with_deps_false_needs_materialized_upstream(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    p = make_pipeline(_sales(counter))
    with pytest.raises(fs.UsageError, match="with_deps=False"):
        p.run("revenue", with_deps=False)
    p.run("orders")
    assert p.run("revenue", with_deps=False).value == 300
    assert counter.calls["orders"] == 1


def test_multi_target_and_run_all(make_pipeline: PipelineFactory, counter: Counter) -> None:
    p = make_pipeline(_sales(counter))
    both = p.run(["revenue", "order_count"])
    assert both.value == {"revenue": 300, "order_count": 3}
    assert "report" not in counter.calls
    everything = p.run()
    assert everything.status == "succeeded"
    assert set(everything.targets) == {"orders", "revenue", "order_count", "report"}
    assert everything.value["report"]["revenue"] == 300


def test_unknown_target_is_a_clear_error(make_pipeline: PipelineFactory, counter: Counter) -> None:
    p = make_pipeline(_sales(counter))
    with pytest.raises(fs.DependencyError, match="Did you mean 'revenue'"):
        p.run("revenu")
    with pytest.raises(fs.ValueNotFoundError, match="run it first"):
        p.get("report")


def test_failure_is_recorded_and_value_raises(make_pipeline: PipelineFactory) -> None:
    @fs.asset
    def orders() -> list[int]:
        raise ValueError("orders feed is down")

    @fs.asset
    def revenue(orders: list[int]) -> int:
        return sum(orders)

    p = make_pipeline([orders, revenue])
    result = p.run("revenue")
    assert result.status == "failed"
    assert "orders feed is down" in (result.error or "")
    with pytest.raises(fs.AssetFailedError) as err:
        _ = result.value
    assert err.value.asset == "orders"
    with pytest.raises(fs.AssetFailedError):
        result.raise_for_status()
    assert p.status("orders") == "failed"
    assert not p.exists("orders")
    states = {s.asset: s.state for s in result.steps}
    assert states == {"orders": "failed", "revenue": "upstream_failed"}


def test_run_result_to_dict_shape(make_pipeline: PipelineFactory, counter: Counter) -> None:
    p = make_pipeline(_sales(counter))
    result = p.run("revenue")
    d = result.to_dict()
    assert set(d) >= {"run_id", "status", "value", "materializations", "targets", "error"}
    assert d["run_id"] == result.run_id and d["status"] == "succeeded" and d["value"] == 300
    assert d["error"] is None and d["targets"] == ["revenue"]
    by_asset = {m["asset"]: m for m in d["materializations"]}
    assert set(by_asset) == {"orders", "revenue"}
    assert by_asset["revenue"]["upstream"] == [by_asset["orders"]["id"]]
    assert by_asset["revenue"]["state"] == "succeeded" and by_asset["revenue"]["reused"] is False
    assert p.result(result.run_id).to_dict()["value"] == 300
    assert [r.run_id for r in p.runs()] == [result.run_id]


def test_lineage_upstream_and_downstream(make_pipeline: PipelineFactory, counter: Counter) -> None:
    p = make_pipeline(_sales(counter))
    p.run("report")
    assert sorted(m.asset for m in p.lineage.upstream("report")) == ["order_count", "revenue"]
    assert sorted(m.asset for m in p.lineage.upstream("report", recursive=True)) == [
        "order_count",
        "orders",
        "revenue",
    ]
    assert sorted(m.asset for m in p.lineage.downstream("orders", recursive=True)) == [
        "order_count",
        "report",
        "revenue",
    ]


def test_observer_sees_events_in_order(make_pipeline: PipelineFactory, recorder: Recorder) -> None:
    @fs.asset
    def pages() -> list[str]:
        return ["/", "/about"]

    p = make_pipeline([pages], observers=[recorder])
    result = p.run("pages")
    kinds = [
        k
        for k in recorder.kinds(result.run_id)
        if k in ("run.started", "asset.started", "asset.succeeded", "run.finished")
    ]
    assert kinds == ["run.started", "asset.started", "asset.succeeded", "run.finished"]
    finished = [e for e in recorder.events if e.kind == "run.finished"]
    assert finished[0].data["status"] == "succeeded"


def test_skip_outcome_skips_dependents(make_pipeline: PipelineFactory) -> None:
    @fs.asset
    def feed() -> Any:
        return fs.Skip("no data today")

    @fs.asset
    def summary(feed: Any) -> Any:
        return feed

    p = make_pipeline([feed, summary])
    result = p.run("summary")
    states = {s.asset: s.state for s in result.steps}
    assert states == {"feed": "skipped", "summary": "skipped"}
    assert p.status("feed") == "skipped"


def test_resources_setup_once_teardown_on_close_and_health(store_url: str) -> None:
    made: list[str] = []
    closed: list[str] = []

    def connect() -> dict[str, str]:
        made.append("db")
        return {"dsn": "warehouse"}

    @fs.asset(requires=["db"])
    def customers(context: fs.Context) -> str:
        return str(context.resources.db["dsn"])

    @fs.asset(requires=["db"])
    def invoices(context: fs.Context, customers: str) -> str:
        return customers + "/" + context.resources["db"]["dsn"]

    db = fs.Resource(
        setup=connect,
        teardown=lambda c: closed.append(c["dsn"]),
        health=lambda c: c["dsn"] == "warehouse",
    )
    p = fs.Pipeline("res", [customers, invoices], resources={"db": db}, store=store_url)
    assert p.health()["resources"] == {"db": "not built"}
    assert p.run("invoices").value == "warehouse/warehouse"
    p.run("invoices", force=True)
    assert made == ["db"]
    health = p.health()
    assert health["resources"] == {"db": "ok"} and health["ok"] is True
    p.close()
    assert closed == ["warehouse"]


def test_resource_setup_failure_fails_the_asset(make_pipeline: PipelineFactory) -> None:
    def broken() -> None:
        raise ConnectionError("warehouse unreachable")

    @fs.asset(requires=["db"])
    def customers(context: fs.Context) -> int:
        return 1

    p = make_pipeline([customers], resources={"db": fs.Resource(setup=broken)})
    result = p.run("customers")
    assert result.status == "failed"
    assert "warehouse unreachable" in (result.error or "")


def test_graph_renders_every_format(make_pipeline: PipelineFactory, counter: Counter) -> None:
    p = make_pipeline(_sales(counter))
    assert "report" in p.graph("ascii")
    assert "orders --> revenue" in p.graph("mermaid")
    assert '"orders" -> "revenue";' in p.graph("dot")


def test_a_chain_goes_on_in_one_thread_and_fan_outs_go_back_to_the_pool(
    make_pipeline: PipelineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process executor runs a step's single successor in the same thread, claimed
    by the finish that made it ready; several successors all go back to the pool."""
    import threading

    threads: dict[str, int] = {}

    def track(name: str, deps: tuple[str, ...]) -> fs.AssetDef:
        def fn(**inputs: int) -> int:
            threads[name] = threading.get_ident()
            return 1 + sum(inputs.values())

        fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter(d, inspect.Parameter.KEYWORD_ONLY) for d in deps]
        )
        return fs.asset(name=name)(fn)

    assets = [
        track("a", ()), track("b", ("a",)), track("c", ("b",)),  # a chain
        track("left", ("c",)), track("right", ("c",)),  # a fan-out after it
        track("join", ("left", "right")),
    ]
    p = make_pipeline(assets)
    claims: list[str] = []
    real = p.store.claim_step

    def counting(run_id: str, asset: str, partition: str, **kw: Any) -> Any:
        claims.append(asset)
        return real(run_id, asset, partition, **kw)

    monkeypatch.setattr(p.store, "claim_step", counting)
    result = p.run("join")
    assert result.status == "succeeded" and p.get("join") == 1 + 4 + 4  # a=1 b=2 c=3 l=r=4
    assert threads["a"] == threads["b"] == threads["c"]
    # c made two steps ready: one was claimed by c's finish, the other claimed by the pool;
    # the join was claimed by the finish of whichever branch ended last
    assert claims == ["a", "left"] or claims == ["a", "right"]
    attempts = {s.asset: s.attempt for s in p.store.list_steps(result.run_id)}
    assert set(attempts.values()) == {1}


def test_the_log_lines_an_asset_writes_are_recorded_and_none_when_it_writes_none(
    make_pipeline: PipelineFactory,
) -> None:
    @fs.asset
    def quiet(context: fs.Context) -> int:
        assert context.log_lines == ()
        return 1

    @fs.asset
    def chatty(context: fs.Context, quiet: int) -> int:
        context.log.debug("not kept")
        context.log.info("read %d", quiet)
        context.log.warning("late")
        assert context.log_lines == ("INFO read 1", "WARNING late")
        return quiet + 1

    p = make_pipeline([quiet, chatty])
    result = p.run("chatty")
    assert result.status == "succeeded"
    by_asset = {m.asset: m for m in result.materializations}
    assert "logs" not in by_asset["quiet"].metadata
    assert by_asset["chatty"].metadata["logs"] == ["INFO read 1", "WARNING late"]
