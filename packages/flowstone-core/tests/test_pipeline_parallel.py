"""Parallel branches joined exactly once, in all-or-nothing and partial modes."""

from __future__ import annotations

from typing import Any

from conftest import Counter, PipelineFactory

import flowstone as fs


def _newsroom(
    counter: Counter,
    *,
    mode: str = "all_or_nothing",
    fail: str = "",
    required: tuple[str, ...] = (),
) -> list[fs.AssetDef]:
    @fs.asset
    def city() -> str:
        return "Lyon"

    def branch(name: str) -> fs.AssetDef:
        def fn(city: str) -> str:
            counter.hit(name)
            if name == fail:
                raise RuntimeError(f"{name} service unavailable")
            return f"{name} of {city}"

        fn.__name__ = name
        return fs.asset(fn)

    @fs.asset(
        parallel=fs.Parallel(
            branches={"maps": "generate_maps", "news": "front_pages", "weather": "forecast"},
            mode=mode,
            required=required,
        )
    )  # type: ignore[arg-type]
    def enrich(branches: dict[str, Any], input: dict[str, Any], city: str) -> dict[str, Any]:
        counter.hit("enrich")
        return {"branches": branches, "input": input, "city": city}

    return [city, branch("generate_maps"), branch("front_pages"), branch("forecast"), enrich]


def test_three_branches_join_once(make_pipeline: PipelineFactory, counter: Counter) -> None:
    p = make_pipeline(_newsroom(counter))
    result = p.run("enrich")
    assert result.status == "succeeded"
    assert result.value == {
        "branches": {
            "maps": "generate_maps of Lyon",
            "news": "front_pages of Lyon",
            "weather": "forecast of Lyon",
        },
        "input": {"city": "Lyon"},
        "city": "Lyon",
    }
    assert counter.calls["enrich"] == 1


def test_join_lineage_includes_every_branch_final(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    p = make_pipeline(_newsroom(counter))
    result = p.run("enrich")
    mats = {m.asset: m for m in result.materializations}
    finals = {mats[a].id for a in ("generate_maps", "front_pages", "forecast")}
    assert finals <= set(mats["enrich"].upstream)
    assert {m.asset for m in p.lineage.upstream("enrich")} >= {
        "generate_maps",
        "front_pages",
        "forecast",
    }


def test_all_or_nothing_failure_fails_the_parent(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    p = make_pipeline(_newsroom(counter, fail="front_pages"))
    result = p.run("enrich")
    assert result.status == "failed"
    assert "front_pages service unavailable" in (result.error or "")
    assert "enrich" not in counter.calls
    assert {s.asset: s.state for s in result.steps}["enrich"] == "upstream_failed"


def test_partial_mode_joins_with_branch_failed(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    joined: list[dict[str, Any]] = []

    @fs.asset
    def city() -> str:
        return "Lyon"

    @fs.asset
    def generate_maps(city: str) -> str:
        return f"maps of {city}"

    @fs.asset
    def forecast(city: str) -> str:
        raise RuntimeError("weather service unavailable")

    @fs.asset(
        parallel=fs.Parallel(
            branches={"maps": "generate_maps", "weather": "forecast"}, mode="partial"
        )
    )
    def enrich(branches: dict[str, Any]) -> dict[str, Any]:
        counter.hit("enrich")
        joined.append(dict(branches))
        return {name: v for name, v in branches.items() if not isinstance(v, fs.BranchFailed)}

    p = make_pipeline([city, generate_maps, forecast, enrich])
    result = p.run("enrich")
    assert counter.calls["enrich"] == 1
    failed = joined[0]["weather"]
    assert isinstance(failed, fs.BranchFailed) and failed.branch == "weather"
    assert "weather service unavailable" in failed.error
    # the join succeeded: the target's value is available even though a branch failed
    assert result.value == {"maps": "maps of Lyon"}
    assert p.get("enrich") == {"maps": "maps of Lyon"}


def test_partial_mode_required_branch_still_fails(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    p = make_pipeline(_newsroom(counter, mode="partial", fail="forecast", required=("weather",)))
    result = p.run("enrich")
    assert "enrich" not in counter.calls
    enrich = next(s for s in result.steps if s.asset == "enrich")
    assert enrich.state == "upstream_failed" and "required branch 'weather'" in (enrich.error or "")
    assert result.status == "failed" and "forecast service unavailable" in (result.error or "")


def test_unselected_routed_branch_is_branch_skipped(make_pipeline: PipelineFactory) -> None:
    seen: list[dict[str, Any]] = []

    @fs.asset
    def article() -> dict[str, Any]:
        return {"lang": "fr"}

    @fs.router(branches=["translate", "passthrough"])
    def needs_translation(article: dict[str, Any]) -> str:
        return "passthrough" if article["lang"] == "en" else "translate"

    @fs.asset(routed_from="needs_translation")
    def translate(article: dict[str, Any]) -> str:
        return "translated"

    @fs.asset(routed_from="needs_translation")
    def passthrough(article: dict[str, Any]) -> str:
        return "as is"

    @fs.asset(
        parallel=fs.Parallel(branches={"tr": "translate", "pt": "passthrough"}, mode="partial")
    )
    def publish(branches: dict[str, Any]) -> str:
        seen.append(dict(branches))
        return "published"

    p = make_pipeline([article, needs_translation, translate, passthrough, publish])
    result = p.run("publish")
    assert result.status == "succeeded" and result.value == "published"
    assert seen[0]["tr"] == "translated"
    assert isinstance(seen[0]["pt"], fs.BranchSkipped)


def test_partial_join_lineage_includes_the_failed_branch_final(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    p = make_pipeline(_newsroom(counter, mode="partial", fail="forecast"))
    result = p.run("enrich")
    assert isinstance(result.value["branches"]["weather"], fs.BranchFailed)
    upstream = {m.asset: m.state for m in p.lineage.upstream("enrich")}
    assert upstream == {
        "generate_maps": "succeeded",
        "front_pages": "succeeded",
        "forecast": "failed",
        "city": "succeeded",
    }
