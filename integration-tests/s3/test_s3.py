"""S3 on real Celery workers, Postgres and an S3-compatible server: the arrival sensor starts
a partitioned run per new CSV object, each run scatters over the object's rows in batches,
the results are stored as Parquet in S3 and read back downstream; and a reader SIGKILLed in
the middle of an object resumes from its checkpoint with every row recorded exactly once."""

from __future__ import annotations

import csv
import io
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from celery_it import wait_for
from conftest import S3Cluster

pytestmark = pytest.mark.integration

OBJECTS = {"orders-a": 37, "orders-b": 12, "orders-c": 54}


def _csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def test_sensor_runs_a_scatter_per_new_object_and_parquet_comes_back(
    cluster: S3Cluster, s3: Any, s3_env: dict[str, str], load_pipeline: Any
) -> None:
    import pyarrow.parquet as pq

    bucket = s3_env["FLOWSTONE_S3_BUCKET"]
    cluster.start("w1")
    cluster.start("w2")
    pipeline = load_pipeline(cluster.queue)
    for name, count in OBJECTS.items():
        rows = [{"id": i, "qty": i % 7, "note": f'say "hi",\n{name}'} for i in range(count)]
        s3.put_object(Bucket=bucket, Key=f"incoming/{name}.csv", Body=_csv(rows))

    def settled() -> list[Any]:
        runs = [r for r in pipeline.store.list_runs(pipeline="s3_it", limit=50)
                if r.tags.get("sensor") == "arrivals"]
        done = [r for r in runs if r.status in ("succeeded", "failed")]
        return done if len(done) == len(OBJECTS) else []

    runs = wait_for(settled, timeout=180, what="one sensor run per object to finish")
    assert sorted(r.tags["s3_key"] for r in runs) == sorted(f"incoming/{n}.csv" for n in OBJECTS)
    assert all(r.status == "succeeded" for r in runs), [
        (s.asset, s.state, s.error) for r in runs for s in pipeline.result(r.run_id).steps]

    for name, count in OBJECTS.items():
        expected = sum(10 * (i % 7) for i in range(count))
        assert pipeline.get("summary", partition=name) == {
            "rows": count, "total": expected, "first": 0}
        mat = pipeline.store.find_materialization("s3_it", "scored", name)
        assert mat is not None and mat.location.endswith(".rows.parquet")
        assert mat.metadata["value"]["format"] == "rows.parquet"  # recorded from the PUT
        key = mat.location.removeprefix(f"s3://{bucket}/")
        table = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
        assert table.num_rows == count
        assert table.column("id").to_pylist() == list(range(count))  # item order kept
        assert set(table.column("object").to_pylist()) == {f"incoming/{name}.csv"}

    # Nothing new arrives: no more runs, however often the sweepers tick.
    before = len(pipeline.store.list_runs(pipeline="s3_it", limit=50))
    time.sleep(3)  # three more sweeps (FLOWSTONE_SWEEP_INTERVAL=1) evaluate the sensor
    assert len(pipeline.store.list_runs(pipeline="s3_it", limit=50)) == before


def test_reader_killed_mid_object_resumes_and_records_every_row_once(
    cluster: S3Cluster, s3: Any, s3_env: dict[str, str], state_dir: Path, load_pipeline: Any
) -> None:
    bucket = s3_env["FLOWSTONE_S3_BUCKET"]
    marker = state_dir / "s3-reader-killed"
    marker.unlink(missing_ok=True)
    rows = [{"id": i, "qty": 1, "pad": "p" * 400} for i in range(600)]  # ~250 KB: 4 ranges
    s3.put_object(Bucket=bucket, Key="big/killed.csv", Body=_csv(rows))
    cluster.start("w1")
    cluster.start("w2")
    pipeline = load_pipeline(cluster.queue)
    result = pipeline.run("killed_rows", partition="killed", timeout=180)
    assert marker.exists()  # the reader's process really died in the middle of the object
    assert "'offset':" in marker.read_text() and "'offset': 0" not in marker.read_text()
    assert result.status == "succeeded", result.error
    assert result.value == list(range(600))

    from flowstone.partitions import encode_partition

    coordinator = pipeline.scatter_coordinator

    async def q(conn: Any) -> list[Any]:
        return list(await conn.fetch(
            "SELECT i.idx, i.state FROM flowstone.scatter_items i JOIN "
            "flowstone.scatter_barriers b ON b.id = i.barrier_id WHERE b.run_id = $1 AND "
            "b.asset = $2 AND b.partition = $3", result.run_id, "killed_rows",
            encode_partition("killed")))

    items = coordinator.database(pipeline.runner).run(q)
    assert len(items) == 600 and all(r["state"] == "succeeded" for r in items)
    assert Counter(r["idx"] for r in items).most_common(1)[0][1] == 1
