"""pipeline.retry_failed_items: a new run re-executes only a finished scatter's failed items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Counter, PipelineFactory

import flowstone as fs
from flowstone.cli import main

FLAKY = {3, 7}


def _assets(counter: Counter) -> list[fs.AssetDef]:
    @fs.asset
    def ids() -> list[int]:
        return list(range(20))

    @fs.asset(scatter=fs.Scatter(items=lambda ids: ids, failure_threshold=0.2))
    def doubled(context: fs.Context, ids: list[int]) -> int:
        n = context.scatter_item
        if counter.hit(n) == 1 and n in FLAKY:
            raise RuntimeError(f"item {n} is flaky")
        return n * 2

    @fs.asset
    def total(doubled: list[int | None]) -> int:
        return sum(v or 0 for v in doubled)

    return [ids, doubled, total]


def test_retry_runs_only_the_failed_items(make_pipeline: PipelineFactory, counter: Counter) -> None:
    p = make_pipeline(_assets(counter))
    first = p.run("total")
    assert first.status == "succeeded"
    expected = [n * 2 for n in range(20)]
    tolerated = [None if n in FLAKY else v for n, v in enumerate(expected)]
    assert p.get("doubled") == tolerated

    before = dict(counter.calls)
    retry = p.retry_failed_items(first.run_id, "doubled")

    assert retry.status == "succeeded"
    assert retry.run_id != first.run_id
    assert retry.value == expected
    ran_again = {n: counter.calls[n] - before[n] for n in counter.calls}
    assert {n for n, c in ran_again.items() if c} == FLAKY
    assert all(c in (0, 1) for c in ran_again.values())
    assert p.get("doubled") == expected
    earlier = next(m for m in p.result(first.run_id).materializations if m.asset == "doubled")
    assert p.load_materialization(earlier) == tolerated
    run = next(r for r in p.runs() if r.run_id == retry.run_id)
    assert run.tags == {"retry_failed_items_of": first.run_id}
    assert [s.asset for s in retry.steps if s.state == "succeeded"] == ["ids", "doubled"]
    # only the target ran: the downstream total still holds the earlier value
    assert p.get("total") == sum(v or 0 for v in tolerated)


def test_a_retry_run_is_self_contained(make_pipeline: PipelineFactory, counter: Counter) -> None:
    p = make_pipeline(_assets(counter))
    first = p.run("doubled")
    second = p.retry_failed_items(first.run_id, "doubled")
    calls = counter.total()
    third = p.retry_failed_items(second.run_id, "doubled")
    assert third.value == [n * 2 for n in range(20)]
    assert counter.total() == calls  # nothing failed in the second run: nothing re-ran


def test_retry_of_a_reader_scatter_reuses_items_across_pages(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    reader = fs.readers.Iterable([{"n": n} for n in range(20)])

    @fs.asset(scatter=fs.Scatter(reader=reader, page_size=6, failure_threshold=0.2))
    def tripled(context: fs.Context) -> int:
        n = int(context.scatter_item["n"])
        if counter.hit(n) == 1 and n in FLAKY:
            raise RuntimeError(f"item {n} is flaky")
        return n * 3

    p = make_pipeline([tripled])
    first = p.run("tripled")
    assert [i for i, v in enumerate(first.value) if v is None] == sorted(FLAKY)
    retry = p.retry_failed_items(first.run_id, "tripled")
    assert retry.value == [n * 3 for n in range(20)]
    assert counter.total() == 20 + len(FLAKY)


def test_unknown_run(make_pipeline: PipelineFactory, counter: Counter) -> None:
    p = make_pipeline(_assets(counter))
    with pytest.raises(fs.RunNotFoundError, match="no run 'nope'"):
        p.retry_failed_items("nope", "doubled")


def test_asset_must_be_a_scatter_asset(make_pipeline: PipelineFactory, counter: Counter) -> None:
    p = make_pipeline(_assets(counter))
    first = p.run("total")
    with pytest.raises(fs.UsageError, match="'total' is not a scatter asset"):
        p.retry_failed_items(first.run_id, "total")


def test_earlier_run_must_have_scattered_the_asset(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    p = make_pipeline(_assets(counter))
    only_ids = p.run("ids")
    with pytest.raises(fs.UsageError, match="has no scatter results for asset 'doubled'"):
        p.retry_failed_items(only_ids.run_id, "doubled")
    p.run("doubled")
    reused = p.run("total")  # reuses doubled from the run before
    with pytest.raises(fs.UsageError, match="reused the value of run"):
        p.retry_failed_items(reused.run_id, "doubled")


def test_partition_must_match_the_earlier_run(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    parts = fs.StaticPartitions(["a", "b"])

    @fs.asset(partitions=parts)
    def ids(context: fs.Context) -> list[int]:
        return list(range(4))

    @fs.asset(partitions=parts, scatter=fs.Scatter(items=lambda ids: ids))
    def doubled(context: fs.Context, ids: list[int]) -> int:
        counter.hit(context.scatter_item)
        return int(context.scatter_item) * 2

    p = make_pipeline([ids, doubled])
    first = p.run("doubled", "a")
    with pytest.raises(fs.UsageError, match="for partition 'a', not 'b'"):
        p.retry_failed_items(first.run_id, "doubled", "b")
    assert p.retry_failed_items(first.run_id, "doubled", "a").value == [0, 2, 4, 6]
    assert counter.total() == 4


CLI_PIPELINE = """
import pathlib
import flowstone as fs

FLAG = pathlib.Path({flag!r})

@fs.asset
def ids() -> list[int]:
    return list(range(20))

@fs.asset(scatter=fs.Scatter(items=lambda ids: ids, failure_threshold=0.2))
def doubled(context, ids):
    if context.scatter_item in (3, 7) and FLAG.exists():
        raise RuntimeError("flaky")
    return context.scatter_item * 2

pipeline = fs.Pipeline("cli_retry", [ids, doubled], store={store!r})
"""


def test_cli_retry_failed_items(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flag = tmp_path / "flaky"
    flag.touch()
    path = tmp_path / "retry_pipeline.py"
    store = f"sqlite:///{tmp_path / 'runs.db'}"
    path.write_text(CLI_PIPELINE.format(flag=str(flag), store=store), encoding="utf-8")
    spec = f"{path}:pipeline"

    assert main(["run", spec, "doubled", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["value"][3] is None and first["value"][7] is None
    flag.unlink()

    assert main(["retry-failed-items", spec, first["run_id"], "doubled", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "succeeded" and doc["run_id"] != first["run_id"]
    assert doc["value"] == [n * 2 for n in range(20)]

    assert main(["retry-failed-items", spec, "nope", "doubled"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["retry-failed-items", spec, first["run_id"], "ids"]) == 2
    assert "'ids' is not a scatter asset" in capsys.readouterr().err
