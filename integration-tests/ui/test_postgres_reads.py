"""The UI's Postgres reads (``PostgresUIQueries``) through the JSON API, on a schema of their
own in the suite's database, with the in-process executor (no workers needed)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flowstone as fs

pytestmark = pytest.mark.integration
sys.path.insert(0, str(Path(__file__).parents[2] / "plugins" / "flowstone-ui" / "tests"))

from ui_helpers import TOKEN, bearer  # noqa: E402
from ui_pipelines import ASSETS  # noqa: E402


@pytest.fixture(scope="module")
def pg_pipeline(database_url: str) -> Iterator[Any]:
    from flowstone_io_postgres import PostgresRunStore

    schema = f"ui_reads_{uuid.uuid4().hex[:8]}"
    store = PostgresRunStore(database_url, schema=schema, auto_migrate=True, pool_size=2,
                             max_overflow=0)  # fmt: skip
    p = fs.Pipeline("ui_unit", ASSETS, store=store, executor="inprocess")
    yield p

    async def drop(conn: Any) -> None:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    store.run_on_connection(drop, action="dropping the test schema")
    p.close()


@pytest.fixture(scope="module")
def client(pg_pipeline: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from flowstone_ui import create_app
    from flowstone_ui.queries_postgres import PostgresUIQueries

    app = create_app([pg_pipeline], token=TOKEN)
    assert isinstance(app.state.flowstone.queries, PostgresUIQueries)
    with TestClient(app, follow_redirects=False) as c:
        yield c
    app.state.flowstone.backfills.join()


def test_runs_page_by_keyset_with_filters(pg_pipeline: Any, client: Any) -> None:
    ids = [pg_pipeline.run("numbers", force=True).run_id for _ in range(5)]
    bad = pg_pipeline.run("broken").run_id
    seen, cursor = [], None
    while True:
        page = client.get("/api/runs", params={"limit": 2, **({"cursor": cursor} if cursor
                                                                 else {})}).json()
        seen += [r["run_id"] for r in page["runs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[:6] == [bad, *reversed(ids)]
    failed = client.get("/api/runs", params={"status": "failed"}).json()["runs"]
    assert [r["run_id"] for r in failed] == [bad]
    by_asset = client.get("/api/runs", params={"asset": "broken"}).json()["runs"]
    assert [r["run_id"] for r in by_asset] == [bad]
    detail = client.get(f"/api/runs/{bad}").json()
    step = next(s for s in detail["steps"] if s["asset"] == "broken")
    assert "RuntimeError" in step["traceback"] and detail["audit"]


def test_graph_asset_page_and_lineage(pg_pipeline: Any, client: Any) -> None:
    pg_pipeline.run("handled")
    graph = client.get("/api/pipelines/ui_unit/graph").json()
    states = {n["name"]: n["state"] for n in graph["nodes"]}
    assert states["handled"] == "succeeded" and states["large"] == "skipped"
    first = client.get("/api/pipelines/ui_unit/assets/numbers", params={"limit": 2}).json()
    assert len(first["materializations"]) == 2 and first["next_cursor"]
    more = client.get("/api/pipelines/ui_unit/assets/numbers",
                      params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert not {m["id"] for m in first["materializations"]} & {
        m["id"] for m in more["materializations"]}


def test_partition_grid_reads_ranges_and_probes_alike(pg_pipeline: Any, client: Any) -> None:
    for key in ("k0000", "k0100", "k0499", "k0500"):
        pg_pipeline.run("keyed", key)
    page = client.get("/api/pipelines/ui_unit/assets/keyed/partitions",
                      params={"limit": 500}).json()  # one range read (500 keys)
    assert page["summary"] == {"succeeded": 3, "missing": 497}
    small = client.get("/api/pipelines/ui_unit/assets/keyed/partitions",
                       params={"start": 495, "limit": 10}).json()  # probes (10 keys)
    assert [c["state"] for c in small["cells"]][4:6] == ["succeeded", "succeeded"]


def test_scatter_counts_and_failed_items(pg_pipeline: Any, client: Any) -> None:
    run = pg_pipeline.run("squares")
    progress = client.get(f"/api/runs/{run.run_id}/scatter/squares").json()
    assert (progress["succeeded"], progress["failed"], progress["percent"]) == (3, 1, 100.0)
    failed = client.get(f"/api/runs/{run.run_id}/scatter/squares/failed").json()
    assert [i["index"] for i in failed["items"]] == [2]


def test_waits_inbox_pages_and_approve(pg_pipeline: Any, client: Any) -> None:
    runs = [pg_pipeline.run("shipped", force=True).run_id for _ in range(3)]
    first = client.get("/api/waits", params={"limit": 2}).json()
    assert len(first["approvals"]) == 2 and first["next_after"]
    rest = client.get("/api/waits", params={"limit": 2, "after": first["next_after"]}).json()
    pending = [a["run_id"] for a in first["approvals"] + rest["approvals"]]
    assert sorted(pending) == sorted(runs)
    approval = first["approvals"][0]
    out = client.post(f"/api/approvals/{approval['id']}/approve", headers=bearer(),
                      json={"by": "pat"})
    assert out.json()["status"] == "succeeded"
    assert approval["id"] not in [a["id"] for a in client.get("/api/waits").json()["approvals"]]


def test_a_postgres_read_that_runs_too_long_is_cancelled(pg_pipeline: Any) -> None:
    from flowstone.errors import StorageError
    from flowstone_ui.queries_postgres import PostgresUIQueries

    reads = PostgresUIQueries(pg_pipeline.store, seconds=0.2)
    with pytest.raises(StorageError, match=r"statement timeout|canceling statement"):
        reads._fetch("SELECT pg_sleep(5)")
    assert reads._fetch("SELECT 1 AS one")[0]["one"] == 1
