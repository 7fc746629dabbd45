"""The UI in headless Chromium, against Postgres and real Celery workers."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def _wait_status(pipeline: Any, run_id: str, wanted: set[str], timeout: float = 90) -> str:
    import time

    deadline = time.monotonic() + timeout
    while True:
        status = pipeline.store.get_run(run_id).status
        if status in wanted:
            return str(status)
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is {status}, expected {sorted(wanted)}")
        time.sleep(0.2)


def _wait_for_approval(pipeline: Any, run_id: str, timeout: float = 90) -> None:
    import time

    deadline = time.monotonic() + timeout
    while pipeline.store.find_approval(run_id, "payout", pipeline.store.get_run(run_id).partition
                                       ) is None:  # fmt: skip
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} never asked for its approval")
        time.sleep(0.2)


def test_graph_page_shows_states_and_is_screenshotted(pipeline: Any, page: Any,
                                                      shoot: Any) -> None:
    run = pipeline.run("report", "20", wait=False)
    _wait_status(pipeline, run.run_id, {"succeeded"})
    waiting = pipeline.run("payout", "20", wait=False)  # a waiting asset colours it too
    _wait_for_approval(pipeline, waiting.run_id)
    page.goto("/pipelines/ui_it/graph")
    graph = page.locator("#asset-graph")
    graph.wait_for()
    assert page.locator('g.node[data-asset="report"]').get_attribute("class").endswith(
        "st-succeeded")
    assert "kind-router" in page.locator('g.node[data-asset="size"]').get_attribute("class")
    assert "kind-scatter" in page.locator('g.node[data-asset="priced"]').get_attribute("class")
    assert "st-skipped" in page.locator('g.node[data-asset="large_order"]').get_attribute("class")
    shoot(page, "ui-graph")
    page.locator('g.node[data-asset="revenue"]').click()
    page.wait_for_url(re.compile(r"/assets/revenue"))
    assert page.locator("#value-preview").inner_text().strip() == "630"
    shoot(page, "ui-asset")


def test_follow_a_run_from_the_list_to_its_detail(pipeline: Any, page: Any, shoot: Any) -> None:
    run = pipeline.run("report", "12", wait=False)
    _wait_status(pipeline, run.run_id, {"succeeded"})
    page.goto("/runs?pipeline=ui_it")
    row = page.locator(f'tr[data-run="{run.run_id}"]')
    row.wait_for()
    shoot(page, "ui-runs")
    row.locator("a.run-link").click()
    page.wait_for_url(f"**/runs/{run.run_id}")
    steps = page.locator("#steps tr.step")
    assert steps.count() >= 7
    assert "succeeded" in page.locator("#run-status").inner_text()
    assert "chose small_order" in page.locator("body").inner_text()
    shoot(page, "ui-run")


def test_approve_with_the_button_resumes_the_run(pipeline: Any, page: Any, shoot: Any) -> None:
    run = pipeline.run("paid", "7", wait=False)
    _wait_for_approval(pipeline, run.run_id)
    page.goto("/waits")
    card = page.locator("article.approval", has_text=run.run_id)
    card.wait_for()
    assert "pay out 84?" in card.inner_text() and '"amount": 84' in card.inner_text()
    shoot(page, "ui-waits")
    form = card.locator("form.decide").first
    form.locator('input[name="by"]').fill("alice")
    form.locator("button", has_text="Approve").click()
    page.wait_for_url(re.compile(r"/waits\?msg="))
    assert "approved by alice" in page.locator("#msg").inner_text()
    assert _wait_status(pipeline, run.run_id, {"succeeded", "failed"}) == "succeeded"
    assert pipeline.get("paid", "7") == "paid 84"
    page.goto(f"/runs/{run.run_id}")
    assert "succeeded" in page.locator("#run-status").inner_text()
    audit = page.locator("#audit").inner_text()
    assert "approval_approved" in audit and "alice" in audit


def test_scatter_progress_bar_advances_to_100(pipeline: Any, page: Any, shoot: Any) -> None:
    run = pipeline.run("revenue", "300", wait=False)
    page.goto(f"/runs/{run.run_id}")
    bar = page.locator("svg.scatter-bar").first
    bar.wait_for(timeout=60_000)
    listed = page.request.get("/api/scatters").json()
    partition = pipeline.store.get_run(run.run_id).partition
    if pipeline.store.get_step(run.run_id, "priced", partition).state == "waiting":
        assert run.run_id in [s["run_id"] for s in listed]  # under way during the request
    seen: list[float] = []
    for _ in range(600):
        seen.append(float(bar.get_attribute("aria-valuenow") or 0))
        if seen[-1] >= 100.0:
            break
        page.wait_for_timeout(100)
    assert seen[-1] == 100.0, f"the bar stopped at {seen[-1]}%"
    assert any(0.0 < v < 100.0 for v in seen), f"the bar never showed progress: {seen[:20]}"
    assert seen == sorted(seen), "the bar went backwards"
    shoot(page, "ui-scatter")
    assert _wait_status(pipeline, run.run_id, {"succeeded", "failed"}) == "succeeded"
    assert pipeline.get("revenue", "300") == 3 * 300 * 301 // 2


def test_failed_scatter_items_are_listed_with_their_errors(pipeline: Any, page: Any) -> None:
    run = pipeline.run("checked", "9", wait=False)
    assert _wait_status(pipeline, run.run_id, {"succeeded", "failed"}) == "succeeded"
    page.goto(f"/runs/{run.run_id}")
    counts = page.locator(".scatter .counts").inner_text()
    assert "7 succeeded" in counts and "2 failed" in counts
    page.locator("a", has_text="failed items").click()
    listed = json.loads(page.locator("body").inner_text())
    assert [i["index"] for i in listed["items"]] == [3, 7]
    assert "order 4 looks wrong" in listed["items"][0]["error"]


def test_partition_grid_and_a_backfill_with_a_live_progress_bar(pipeline: Any, page: Any,
                                                                shoot: Any) -> None:
    page.goto("/pipelines/ui_it/assets/daily_sales/partitions")
    page.locator("#partition-grid").wait_for()
    assert page.locator("#partition-grid a.cell").count() == 365
    form = page.locator("#backfill-form")
    form.locator('input[name="by"]').fill("bob")
    form.locator('input[name="start"]').fill("2026-01-01")
    form.locator('input[name="end"]').fill("2026-01-10")
    form.locator("button").click()
    page.wait_for_url(re.compile(r"backfill="))
    box = page.locator(".backfill").first
    box.locator("svg.backfill-bar").wait_for()
    bar = box.locator("svg.backfill-bar")
    seen = [float(bar.get_attribute("aria-valuenow") or 0)]
    for _ in range(1200):  # the page's own script polls the API and moves the bar
        if seen[-1] >= 100.0:
            break
        page.wait_for_timeout(100)
        seen.append(float(bar.get_attribute("aria-valuenow") or 0))
    assert seen[-1] == 100.0 and seen == sorted(seen), seen[-10:]
    assert "10 succeeded" in box.inner_text()
    page.reload()
    assert page.locator("#partition-grid a.cell.st-succeeded").count() >= 10
    shoot(page, "ui-partitions")


def test_health_names_the_store_and_the_workers(pipeline: Any, page: Any) -> None:
    response = page.request.get("/api/health")
    assert response.ok
    [report] = response.json()
    assert report["pipeline"] == "ui_it" and report["detail"]["store"] == "ok"
    assert report["ok"] is True, report
