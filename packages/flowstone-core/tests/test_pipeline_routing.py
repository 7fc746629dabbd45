"""Routing: a router picks a branch once per run; the others are skipped; merges still run."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Counter, PipelineFactory, Recorder

import flowstone as fs


def _order_flow(counter: Counter, total: int) -> list[fs.AssetDef]:
    @fs.asset
    def order() -> dict[str, Any]:
        return {"id": 7, "total": total}

    @fs.router(branches=["small", "large"])
    def size(order: dict[str, Any]) -> str:
        counter.hit("size")
        return "small" if order["total"] < 100 else "large"

    @fs.asset(routed_from="size")
    def small(order: dict[str, Any]) -> str:
        counter.hit("small")
        return f"auto-approved {order['id']}"

    @fs.asset(routed_from="size")
    def large(order: dict[str, Any]) -> str:
        counter.hit("large")
        return f"manual review {order['id']}"

    @fs.asset(optional_deps=["small", "large"])
    def handled(small: str | None = None, large: str | None = None) -> str:
        counter.hit("handled")
        return small if small is not None else str(large)

    return [order, size, small, large, handled]


@pytest.mark.parametrize(
    ("total", "chosen", "other"), [(40, "small", "large"), (500, "large", "small")]
)
def test_router_selects_branch_and_skips_the_other(
    make_pipeline: PipelineFactory, counter: Counter, total: int, chosen: str, other: str
) -> None:
    p = make_pipeline(_order_flow(counter, total))
    result = p.run("handled")
    assert result.status == "succeeded"
    assert result.value == ("auto-approved 7" if chosen == "small" else "manual review 7")
    states = {s.asset: s.state for s in result.steps}
    assert states[chosen] == "succeeded" and states[other] == "skipped"
    assert p.status(other) == "skipped"
    assert other not in counter.calls and counter.calls["handled"] == 1
    assert p.get("size") == chosen


def test_decision_is_persisted_once_and_replayed_on_resume(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    class FailFirstLineage:
        failed = False

        def on_event(self, event: fs.Event) -> None:
            if event.kind == "lineage.recorded" and event.asset == "size" and not self.failed:
                self.failed = True
                raise RuntimeError("lineage backend down")

    recorder = Recorder()
    p = make_pipeline(
        _order_flow(counter, 40), observers=[FailFirstLineage(), recorder], on_lineage_error="fail"
    )
    first = p.run("handled")
    assert first.status == "failed"
    assert counter.calls == {"size": 1}
    assert p.store.get_route_decision(first.run_id, "size", "") == "small"

    resumed = p.resume(first.run_id)
    assert resumed.status == "succeeded" and resumed.value == "auto-approved 7"
    assert counter.calls["size"] == 1  # replayed from the store, never re-evaluated
    decided = [e for e in recorder.events if e.kind == "route.decided"]
    assert {e.data["branch"] for e in decided} == {"small"}
    assert {s.asset: s.state for s in resumed.steps}["large"] == "skipped"


def test_router_returning_unknown_branch_fails_clearly(make_pipeline: PipelineFactory) -> None:
    @fs.router(branches=["eu"])
    def region() -> str:
        return "mars"

    @fs.asset(routed_from="region")
    def eu() -> str:
        return "eu"

    p = make_pipeline([region, eu])
    result = p.run("eu")
    assert result.status == "failed"
    assert "router 'region' returned 'mars'" in (result.error or "")
