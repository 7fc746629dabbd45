"""The JSON API against a real SQLite store (and the memory store through the fallback)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ui_helpers import TOKEN, bearer, client_for, wait_for


def test_graph_marks_kinds_and_colours_by_latest_state(pipeline: Any) -> None:
    pipeline.run("handled")
    pipeline.run("broken")
    graph = client_for(pipeline).get("/api/pipelines/ui_unit/graph").json()
    nodes = {n["name"]: n for n in graph["nodes"]}
    assert nodes["size"]["kind"] == "router"
    assert nodes["small"]["kind"] == "branch"
    assert nodes["squares"]["kind"] == "scatter"
    assert nodes["keyed"]["partitioned"] is True
    assert nodes["handled"]["state"] == "succeeded"
    assert nodes["broken"]["state"] == "failed"
    assert nodes["large"]["state"] == "skipped"
    assert nodes["shipped"]["state"] is None
    # layered: every edge goes from a lower layer to a higher one
    for e in graph["edges"]:
        assert nodes[e["source"]]["layer"] < nodes[e["target"]]["layer"]
    labels = {(e["source"], e["target"]): e["label"] for e in graph["edges"]}
    assert labels[("size", "small")] == "route"
    assert labels[("small", "handled")] == "optional"


def test_runs_are_keyset_paged_newest_first_without_gaps(pipeline: Any) -> None:
    ids = [pipeline.run("numbers", force=True).run_id for _ in range(7)]
    client = client_for(pipeline)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/runs", params=params).json()
        seen += [r["run_id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


def test_runs_filter_by_status_asset_and_time(pipeline: Any) -> None:
    ok = pipeline.run("doubled").run_id
    bad = pipeline.run("broken").run_id
    client = client_for(pipeline)
    failed = client.get("/api/runs", params={"status": "failed"}).json()["runs"]
    assert [r["run_id"] for r in failed] == [bad]
    by_asset = client.get("/api/runs", params={"asset": "doubled"}).json()["runs"]
    assert [r["run_id"] for r in by_asset] == [ok]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert client.get("/api/runs", params={"since": future}).json()["runs"] == []
    assert len(client.get("/api/runs", params={"until": future}).json()["runs"]) == 2
    assert client.get("/api/runs", params={"status": "exploded"}).status_code == 422
    assert client.get("/api/runs", params={"cursor": "not-a-cursor"}).status_code == 400
    assert client.get("/api/runs", params={"pipeline": "nope"}).status_code == 404
    assert client.get("/api/runs", params={"since": "2026-01-01T00:00:00"}).status_code == 400


def test_run_detail_has_steps_errors_routes_and_audit(pipeline: Any) -> None:
    routed = pipeline.run("handled").run_id
    client = client_for(pipeline)
    detail = client.get(f"/api/runs/{routed}").json()
    assert detail["run"]["status"] == "succeeded"
    assert {s["asset"] for s in detail["steps"]} >= {"numbers", "doubled", "size", "handled"}
    assert detail["routes"] == [{"router": "size", "partition": "", "branch": "small"}]
    done = [s for s in detail["steps"] if s["state"] == "succeeded"]
    assert all(s["duration_s"] is not None and s["attempt"] >= 1 for s in done)
    assert detail["can_cancel"] is False and detail["can_resume"] is False
    failed = pipeline.run("broken").run_id
    detail = client.get(f"/api/runs/{failed}").json()
    step = next(s for s in detail["steps"] if s["asset"] == "broken")
    assert "this asset always fails" in step["error"]
    assert "RuntimeError" in step["traceback"]
    assert step["logs"] == ["INFO checking 4 numbers"]  # the step's context.log lines
    assert "checking 4 numbers" in client.get(f"/runs/{failed}").text
    assert detail["can_resume"] is True
    assert detail["audit"], "the store's audit trail is shown"
    assert client.get("/api/runs/no-such-run").status_code == 404


def test_scatter_progress_and_failed_items_of_an_inline_scatter(pipeline: Any) -> None:
    run = pipeline.run("squares")
    client = client_for(pipeline)
    progress = client.get(f"/api/runs/{run.run_id}/scatter/squares").json()
    assert progress["finished"] is True
    assert (progress["succeeded"], progress["failed"], progress["total"]) == (3, 1, 4)
    assert progress["percent"] == 100.0
    failed = client.get(f"/api/runs/{run.run_id}/scatter/squares/failed").json()
    assert [i["index"] for i in failed["items"]] == [2]
    assert "three is not welcome" in failed["items"][0]["error"]
    detail = client.get(f"/api/runs/{run.run_id}").json()
    assert [s["asset"] for s in detail["retry_items"]] == ["squares"]
    assert client.get(f"/api/runs/{run.run_id}/scatter/numbers").status_code == 400


def test_asset_detail_pages_records_with_lineage_and_a_bounded_preview(pipeline: Any) -> None:
    for _ in range(3):
        pipeline.run("doubled", force=True)
    client = client_for(pipeline)
    first = client.get("/api/pipelines/ui_unit/assets/doubled", params={"limit": 2}).json()
    assert len(first["materializations"]) == 2 and first["next_cursor"]
    second = client.get("/api/pipelines/ui_unit/assets/doubled",
                        params={"limit": 2, "cursor": first["next_cursor"]}).json()
    ids = [m["id"] for m in first["materializations"] + second["materializations"]]
    assert len(ids) == len(set(ids)) == 3
    assert first["preview"]["text"].replace(" ", "").replace("\n", "") == "[2,4,6,8]"
    newest = first["materializations"][0]
    up = first["lineage"]["upstream"]
    assert [u["asset"] for u in up] == ["numbers"] and up[0]["id"] == newest["upstream"][0]
    numbers = client.get("/api/pipelines/ui_unit/assets/numbers",
                         params={"materialization": up[0]["id"]}).json()
    assert newest["id"] in {d["id"] for d in numbers["lineage"]["downstream"]}
    assert client.get("/api/pipelines/ui_unit/assets/nope").status_code == 404
    assert client.get("/api/pipelines/ui_unit/assets/numbers",
                      params={"materialization": newest["id"]}).status_code == 400


def test_partition_grid_pages_and_aggregates(pipeline: Any) -> None:
    pipeline.run("keyed", "k0001")
    pipeline.run("keyed", "k0600")
    client = client_for(pipeline)
    page = client.get("/api/pipelines/ui_unit/assets/keyed/partitions",
                      params={"limit": 500}).json()
    assert page["total"] == 1200 and page["next_start"] == 500 and page["prev_start"] is None
    assert len(page["cells"]) == 500
    assert page["cells"][1]["state"] == "succeeded" and page["cells"][0]["state"] == "missing"
    assert page["summary"] == {"succeeded": 1, "missing": 499}
    aggregated = client.get("/api/pipelines/ui_unit/assets/keyed/partitions",
                            params={"start": 500, "limit": 500, "group": 50}).json()
    assert len(aggregated["cells"]) == 10
    cell = aggregated["cells"][2]  # k0600..k0649
    assert cell["first"] == "k0600" and cell["counts"] == {"missing": 49, "succeeded": 1}
    # more keys than cells: the group grows so at most 500 cells are drawn
    wide = client.get("/api/pipelines/ui_unit/assets/keyed/partitions",
                      params={"limit": 5000}).json()
    assert len(wide["cells"]) <= 500 and wide["group"] >= 3
    assert client.get("/api/pipelines/ui_unit/assets/numbers/partitions").status_code == 200


def test_multi_partitions_are_shown_by_two_chosen_dimensions(pipeline: Any) -> None:
    from datetime import date

    pipeline.run("regional", (date(2024, 1, 2), "us", "free"))
    client = client_for(pipeline)
    grid = client.get("/api/pipelines/ui_unit/assets/regional/partitions",
                      params={"row_dim": "region", "col_dim": "day", "col_limit": 5,
                              "fixed": "tier=free"}).json()
    assert grid["mode"] == "multi" and grid["rows"] == ["eu", "us", "apac"]
    assert grid["cols"][:2] == ["2024-01-01", "2024-01-02"] and grid["col_total"] == 91
    assert len(grid["cells"]) == 3 * 5 and grid["next_col_start"] == 5
    assert grid["cells"][1 * 5 + 1]["state"] == "succeeded"  # us x 2024-01-02
    assert sum(c["state"] == "succeeded" for c in grid["cells"]) == 1
    other = client.get("/api/pipelines/ui_unit/assets/regional/partitions",
                       params={"row_dim": "region", "col_dim": "day",
                               "fixed": "tier=gold"}).json()
    assert all(c["state"] == "missing" for c in other["cells"])
    bad = client.get("/api/pipelines/ui_unit/assets/regional/partitions",
                     params={"row_dim": "planet"})
    assert bad.status_code == 400 and "planet" in bad.json()["detail"]


def test_backfill_runs_in_the_background_and_reports_progress(pipeline: Any) -> None:
    client = client_for(pipeline)
    started = client.post("/api/pipelines/ui_unit/assets/keyed/backfills", headers=bearer(),
                          json={"start": "k0010", "end": "k0019", "parallel": 2, "by": "ann"})
    assert started.status_code == 200, started.text
    job = started.json()
    assert job["total"] == 10
    done = wait_for(lambda: (b := client.get(f"/api/backfills/{job['id']}").json())
                    and b["state"] != "running" and b)
    assert (done["state"], done["succeeded"], done["percent"]) == ("finished", 10, 100.0)
    grid = client.get("/api/pipelines/ui_unit/assets/keyed/partitions",
                      params={"limit": 30}).json()
    assert grid["summary"]["succeeded"] == 10
    assert client.get("/api/backfills/unknown").status_code == 404


def test_memory_store_pages_through_the_fallback(memory_pipeline: Any) -> None:
    ids = [memory_pipeline.run("numbers", force=True).run_id for _ in range(5)]
    client = client_for(memory_pipeline)
    first = client.get("/api/runs", params={"limit": 2}).json()
    second = client.get("/api/runs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    third = client.get("/api/runs", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    got = [r["run_id"] for page in (first, second, third) for r in page["runs"]]
    assert got == list(reversed(ids)) and third["next_cursor"] is None
    graph = client.get("/api/pipelines/ui_memory/graph").json()
    assert {n["name"]: n["state"] for n in graph["nodes"]}["numbers"] == "succeeded"


@pytest.mark.parametrize("path", ["/api/runs", "/api/waits", "/api/pipelines/ui_unit/graph"])
def test_protected_reads_need_the_token(pipeline: Any, path: str) -> None:
    client = client_for(pipeline, protect_reads=True)
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": "Bearer wrong-token-wrong-token"}
                      ).status_code == 403
    assert client.get(path, headers=bearer()).status_code == 200
    assert client.get("/runs").status_code == 401
    client.get(f"/?token={TOKEN}")
    assert client.get("/runs").status_code == 200


def test_health_reports_each_pipeline(pipeline: Any) -> None:
    [report] = client_for(pipeline).get("/api/health").json()
    assert report["pipeline"] == "ui_unit" and report["ok"] is True
    assert report["detail"]["store"] == "ok"


def test_a_sqlite_read_that_runs_too_long_is_interrupted(pipeline: Any) -> None:
    from flowstone.errors import StorageError
    from flowstone_ui.queries_sqlite import SQLiteUIQueries

    reads = SQLiteUIQueries(pipeline.store, seconds=0.2)
    endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"
    with pytest.raises(StorageError, match=r"time limit 0\.2 s"):
        reads._read(endless)
    assert reads._read("SELECT 1") == [(1,)]


def test_a_step_that_waited_starts_on_the_timeline_when_it_began_waiting(pipeline: Any) -> None:
    run = pipeline.run("shipped")
    waiting = client_for(pipeline).get(f"/api/runs/{run.run_id}").json()
    review = next(s for s in waiting["steps"] if s["asset"] == "review")
    assert review["finished_at"] is None  # still waiting: its bar reaches the latest update
    assert review["offset_pct"] + review["width_pct"] == pytest.approx(100.0, abs=0.02)
    [approval] = pipeline.approvals()
    pipeline.approve(approval.id, by="ann")
    detail = client_for(pipeline).get(f"/api/runs/{run.run_id}").json()
    waited = next(e for e in detail["audit"] if e["kind"] == "step_waiting")
    review = next(s for s in detail["steps"] if s["asset"] == "review")
    assert review["started_at"] == waited["at"]
    assert review["duration_s"] > 0 and review["width_pct"] > 0


def test_no_scatter_under_way_lists_none(pipeline: Any) -> None:
    pipeline.run("squares")  # the inline scatter finishes inside run()
    client = client_for(pipeline)
    assert client.get("/api/scatters").json() == []
    assert "No scatter is under way" in client.get("/scatters").text
