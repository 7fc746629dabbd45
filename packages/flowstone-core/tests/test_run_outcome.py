"""Runs that succeed with tolerated failures (issue 14 item 6): a partial parallel whose
optional branch failed, a scatter under its failure threshold. Memory and SQLite stores;
integration-tests/postgres/test_partial_runs.py runs the same on PostgreSQL."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import PipelineFactory

import flowstone as fs
from flowstone.cli import main


def newsroom(*, required: tuple[str, ...] = ()) -> list[fs.AssetDef]:
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
            branches={"maps": "generate_maps", "weather": "forecast"},
            mode="partial",
            required=required,
        )
    )
    def enrich(branches: dict[str, Any]) -> dict[str, Any]:
        return {n: v for n, v in branches.items() if not isinstance(v, fs.BranchFailed)}

    return [city, generate_maps, forecast, enrich]


def pings() -> list[fs.AssetDef]:
    @fs.asset
    def hosts() -> list[str]:
        return [f"db{i}" for i in range(10)]

    @fs.asset(scatter=fs.Scatter(items=lambda hosts: hosts, failure_threshold=0.5))
    def ping(context: fs.Context, hosts: list[str]) -> str:
        if context.scatter_item == "db3":
            raise ConnectionError("db3 is down")
        return "ok"

    return [hosts, ping]


def test_a_join_that_ran_despite_a_failed_optional_branch_succeeded_partially(
    make_pipeline: PipelineFactory,
) -> None:
    result = make_pipeline(newsroom()).run("enrich")
    assert result.status == "succeeded" and result.ok
    assert result.stored_status == "failed"  # the store's rule sees a failed step
    assert result.partial
    [failure] = result.partial_failures
    assert failure.asset == "forecast"
    assert "weather service unavailable" in failure.error
    assert result.error is None
    assert result.raise_for_status().value == {"maps": "maps of Lyon"}
    data = result.to_dict()
    assert data["status"] == "succeeded"
    assert [f["asset"] for f in data["partial_failures"]] == ["forecast"]


def test_a_failed_required_branch_leaves_nothing_usable_and_the_run_failed(
    make_pipeline: PipelineFactory,
) -> None:
    result = make_pipeline(newsroom(required=("weather",))).run("enrich")
    assert result.status == "failed" and not result.ok
    assert result.partial_failures == ()
    assert "weather service unavailable" in (result.error or "")


def test_a_scatter_with_tolerated_item_failures_is_a_partial_success(
    make_pipeline: PipelineFactory,
) -> None:
    result = make_pipeline(pings()).run("ping")
    assert result.status == "succeeded"
    [failure] = result.partial_failures
    assert failure.asset == "ping" and failure.failed_items == 1
    assert "1 of 10 items failed" in failure.error and "db3 is down" in failure.error


def test_a_run_without_failures_has_no_partial_failures(make_pipeline: PipelineFactory) -> None:
    @fs.asset
    def one() -> int:
        return 1

    result = make_pipeline([one]).run("one")
    assert result.status == "succeeded" and result.partial_failures == ()
    assert result.to_dict()["partial_failures"] == []


def _cli(tmp_path: Path, store_url: str, body: str) -> str:
    module = tmp_path / "partial_pipeline.py"
    module.write_text(
        textwrap.dedent(
            """
            from typing import Any
            import flowstone as fs
            """
        )
        + textwrap.dedent(body)
        + f"\npipeline = fs.Pipeline('partial', assets, store={store_url!r})\n"
    )
    return f"{module}:pipeline"


NEWSROOM = """
@fs.asset
def generate_maps() -> str:
    return "maps"

@fs.asset
def forecast() -> str:
    raise RuntimeError("weather service unavailable")

@fs.asset(parallel=fs.Parallel(branches={"maps": "generate_maps", "weather": "forecast"},
                               mode="partial"))
def enrich(branches: dict[str, Any]) -> list[str]:
    return sorted(branches)

assets = [generate_maps, forecast, enrich]
"""


def test_the_cli_shows_the_partial_success_in_run_show_runs_and_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # each command reads the run back: a durable store
    spec = _cli(tmp_path, f"sqlite:///{tmp_path}/cli.db", NEWSROOM)
    assert main(["run", spec, "enrich", "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["status"] == "succeeded"
    assert [f["asset"] for f in run["partial_failures"]] == ["forecast"]

    assert main(["show", spec, run["run_id"]]) == 0
    shown = capsys.readouterr().out
    assert f"run {run['run_id']} succeeded" in shown
    assert "succeeded with 1 tolerated failure(s):" in shown
    assert "forecast: failed: RuntimeError: weather service unavailable" in shown

    assert main(["runs", spec, "--status", "succeeded", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)["runs"]
    assert listed["run_id"] == run["run_id"] and listed["status"] == "succeeded"
    assert listed["stored_status"] == "failed"
    assert [f["asset"] for f in listed["partial_failures"]] == ["forecast"]
    assert main(["runs", spec, "--status", "failed", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == []

    assert main(["status", spec, "enrich", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "succeeded"
    assert [f["asset"] for f in status["partial_failures"]] == ["forecast"]
