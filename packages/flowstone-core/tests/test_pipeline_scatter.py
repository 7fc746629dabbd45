"""Scatter: fan out over items, bounded, batched, thresholded, resumable, gathered in order."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Counter, PipelineFactory

import flowstone as fs


@fs.asset
def urls() -> list[str]:
    return [f"/page/{i}" for i in range(5)]


def test_items_from_deps_gathered_in_item_order(make_pipeline: PipelineFactory) -> None:
    @fs.asset(scatter=fs.Scatter(items=lambda urls: [{"url": u} for u in urls]))
    def page(context: fs.Context, urls: list[str]) -> int:
        return len(context.scatter_item["url"]) * 10 + int(context.scatter_item["url"][-1])

    @fs.asset
    def total_size(page: list[int]) -> int:
        return sum(page)

    p = make_pipeline([urls, page, total_size])
    result = p.run("total_size")
    assert p.get("page") == [70, 71, 72, 73, 74]
    assert result.value == 360


def test_custom_gather(make_pipeline: PipelineFactory) -> None:
    @fs.asset(scatter=fs.Scatter(items=lambda urls: urls, gather=lambda rs: {"pages": len(rs)}))
    def page(context: fs.Context, urls: list[str]) -> str:
        return str(context.scatter_item)

    p = make_pipeline([urls, page])
    assert p.run("page").value == {"pages": 5}


def test_scatter_items_parameters_must_be_dependencies() -> None:
    with pytest.raises(fs.DependencyError, match=r"Scatter items= takes \['urls'\]"):

        @fs.asset(scatter=fs.Scatter(items=lambda urls: urls))
        def page(context: fs.Context) -> str:
            return str(context.scatter_item)


def test_max_concurrent_bounds_items_in_flight(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    @fs.asset
    def ids() -> list[int]:
        return list(range(1000))

    @fs.asset(scatter=fs.Scatter(items=lambda ids: ids, max_concurrent=8), deps=["ids"])
    def fetch(context: fs.Context) -> int:
        counter.enter()
        try:
            counter.hit(context.scatter_item)
            time.sleep(0.0005)
            return int(context.scatter_item) * 2
        finally:
            counter.leave()

    p = make_pipeline([ids, fetch])
    result = p.run("fetch")
    assert result.value == [i * 2 for i in range(1000)]
    assert counter.peak <= 8
    assert counter.peak > 1  # really concurrent
    assert len(counter.calls) == 1000 and set(counter.calls.values()) == {1}


def test_batching_by_max_items_with_batch_input(make_pipeline: PipelineFactory) -> None:
    batches: list[tuple[int, list[int], Any]] = []
    lock = threading.Lock()

    @fs.asset
    def order_ids() -> list[int]:
        return list(range(10))

    @fs.asset(
        scatter=fs.Scatter(
            items=lambda order_ids: order_ids,
            batching=fs.Batching(
                max_items=4, batch_input=lambda order_ids: {"count": len(order_ids)}
            ),
        ),
        deps=["order_ids"],
    )
    def priced(context: fs.Context) -> list[int]:
        batch = context.batch
        assert batch is not None
        with lock:
            batches.append((batch.index, list(batch.items), batch.input))
        return [i * 100 for i in batch.items]

    p = make_pipeline([order_ids, priced])
    assert p.run("priced").value == [i * 100 for i in range(10)]
    assert sorted((i, items) for i, items, _ in batches) == [
        (0, [0, 1, 2, 3]),
        (1, [4, 5, 6, 7]),
        (2, [8, 9]),
    ]
    assert all(inp == {"count": 10} for _, _, inp in batches)


def test_batching_by_max_bytes(make_pipeline: PipelineFactory) -> None:
    sizes: list[int] = []
    lock = threading.Lock()

    @fs.asset
    def words() -> list[str]:
        return ["abcd"] * 3 + ["efgh"] * 4  # each item is 6 bytes of JSON

    @fs.asset(
        scatter=fs.Scatter(
            items=lambda words: [f"{w}{i}"[:4] + str(i) for i, w in enumerate(words)],
            batching=fs.Batching(max_bytes=15),
        ),
        deps=["words"],
    )
    def upper(context: fs.Context) -> list[str]:
        assert context.batch is not None
        with lock:
            sizes.append(sum(len(json.dumps(i)) for i in context.batch.items))
        return [str(i).upper() for i in context.batch.items]

    p = make_pipeline([words, upper])
    result = p.run("upper")
    assert result.value == [f"{w}{i}".upper() for i, w in enumerate(["abcd"] * 3 + ["efgh"] * 4)]
    assert sizes and all(s <= 15 for s in sizes) and len(sizes) == 4


def test_collect_mode_marks_single_items_failed(make_pipeline: PipelineFactory) -> None:
    @fs.asset
    def emails() -> list[str]:
        return ["a@x.org", "broken", "c@x.org", "d@x.org"]

    @fs.asset(
        scatter=fs.Scatter(
            items=lambda emails: emails,
            batching=fs.Batching(max_items=2, on_item_error="collect"),
            failure_threshold=1,  # tolerate one failed item
        ),
        deps=["emails"],
    )
    def domain(context: fs.Context) -> list[Any]:
        assert context.batch is not None
        return [
            i.split("@")[1] if "@" in i else fs.ItemFailed(f"no @ in {i!r}")
            for i in context.batch.items
        ]

    p = make_pipeline([emails, domain])
    assert p.run("domain").value == ["x.org", None, "x.org", "x.org"]
    failed = [
        r
        for r in p.store.load_item_results(p.runs()[0].run_id, "domain", "")
        if r.state == "failed"
    ]
    assert [(r.index, r.error) for r in failed] == [(1, "no @ in 'broken'")]


@pytest.mark.parametrize("threshold", [0.1, 3])
def test_failure_threshold_stops_early(
    make_pipeline: PipelineFactory, counter: Counter, threshold: float
) -> None:
    @fs.asset
    def ids() -> list[int]:
        return list(range(200))

    @fs.asset(
        scatter=fs.Scatter(items=lambda ids: ids, max_concurrent=2, failure_threshold=threshold),
        deps=["ids"],
    )
    def fetch(context: fs.Context) -> int:
        counter.hit(context.scatter_item)
        raise ConnectionError(f"item {context.scatter_item} unreachable")

    p = make_pipeline([ids, fetch])
    result = p.run("fetch")
    assert result.status == "failed"
    assert counter.total() < 200  # the remaining items were never started
    error = result.error or ""
    assert "ScatterThresholdError" in error and "failure threshold" in error
    assert "remaining items were not started" in error and "pipeline.resume(" in error
    limit = "10.0%" if isinstance(threshold, float) else "3 items"
    assert limit in error


def test_equal_items_run_once(make_pipeline: PipelineFactory, counter: Counter) -> None:
    @fs.asset(scatter=fs.Scatter(items=lambda: [{"sku": 1}, {"sku": 2}, {"sku": 1}, {"sku": 2}]))
    def stock(context: fs.Context) -> int:
        counter.hit(context.scatter_item["sku"])
        return int(context.scatter_item["sku"]) * 5

    p = make_pipeline([stock])
    assert p.run("stock").value == [5, 10]
    assert counter.calls == {1: 1, 2: 1}


def test_reader_scatter_over_json_lines(make_pipeline: PipelineFactory, tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    path.write_text("".join(json.dumps({"id": i, "total": i * 3}) + "\n" for i in range(25)))

    @fs.asset(scatter=fs.Scatter(reader=fs.readers.JsonLines(path), page_size=10))
    def order_tax(context: fs.Context) -> float:
        return float(context.scatter_item["total"]) / 10

    @fs.asset
    def tax_total(order_tax: list[float]) -> float:
        return round(sum(order_tax), 2)

    p = make_pipeline([order_tax, tax_total])
    assert p.run("tax_total").value == round(sum(i * 3 for i in range(25)) / 10, 2)
    assert len(p.get("order_tax")) == 25


def test_resume_reruns_only_failed_items(make_pipeline: PipelineFactory, counter: Counter) -> None:
    broken = {3, 7}

    @fs.asset
    def ids() -> list[int]:
        return list(range(10))

    @fs.asset(
        scatter=fs.Scatter(items=lambda ids: ids, max_concurrent=16, failure_threshold=0),
        deps=["ids"],
    )
    def thumbnail(context: fs.Context) -> str:
        item = context.scatter_item
        counter.hit(item)
        if item in broken:
            raise OSError(f"image {item} corrupt")
        return f"thumb-{item}"

    @fs.asset
    def gallery(thumbnail: list[str]) -> int:
        return len(thumbnail)

    p = make_pipeline([ids, thumbnail, gallery])
    first = p.run("gallery")
    assert first.status == "failed"
    assert set(counter.calls) == set(range(10))
    broken.clear()  # the images are fixed
    resumed = p.resume(first.run_id)
    assert resumed.status == "succeeded" and resumed.value == 10
    assert p.get("thumbnail") == [f"thumb-{i}" for i in range(10)]
    assert counter.calls == {i: (2 if i in (3, 7) else 1) for i in range(10)}


def test_rate_limit_spaces_item_starts(make_pipeline: PipelineFactory) -> None:
    starts: list[float] = []
    lock = threading.Lock()

    @fs.asset(scatter=fs.Scatter(items=lambda: list(range(6)), rate_limit="50/s", max_concurrent=6))
    def ping(context: fs.Context) -> int:
        with lock:
            starts.append(time.monotonic())
        return int(context.scatter_item)

    p = make_pipeline([ping])
    assert p.run("ping").value == list(range(6))
    starts.sort()
    # 6 starts at 50/s cannot fit in less than 5 intervals of 20 ms (a lower bound: never flaky)
    assert starts[-1] - starts[0] >= 5 * 0.02 * 0.9
