"""S3ArrivalSensor through the core daemon, on a real pipeline whose values live in S3:
one partitioned run per new or overwritten CSV object, each scattering over the object's
rows in batches, the results stored as Parquet and read back downstream."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

import flowstone as fs
from flowstone.daemon import Daemon
from flowstone.errors import UsageError
from flowstone.sensors import SensorContext
from flowstone_io_s3 import S3ArrivalSensor, S3IOManager, S3ItemReader, s3_arrival_sensor

from . import _objects

DAY = fs.DailyPartitions("2024-01-01")


def _day(key: str) -> date:
    return date.fromisoformat(key.rsplit("/", 1)[-1].removesuffix(".csv"))


def _pipeline(endpoint: str, bucket: str) -> fs.Pipeline:
    @fs.asset(partitions=DAY)
    def arrival(context: fs.Context) -> str:
        return f"incoming/{context.partition_key}.csv"

    @fs.asset(
        partitions=DAY,
        scatter=fs.Scatter(
            reader=S3ItemReader(bucket, key=lambda deps: deps["arrival"], endpoint_url=endpoint),
            batching=fs.Batching(max_items=2),
            page_size=3,
        ),
    )
    def scored(context: fs.Context, arrival: str) -> list[dict[str, Any]]:
        assert context.batch is not None
        return [{"id": int(r["id"]), "score": 10 * int(r["v"])} for r in context.batch.items]

    @fs.asset(partitions=DAY)
    def total(scored: list[dict[str, Any]]) -> int:
        return sum(row["score"] for row in scored)

    values = S3IOManager(bucket, endpoint_url=endpoint, formats={"scored": "parquet"})
    sensor = s3_arrival_sensor(
        "arrivals", bucket=bucket, prefix="incoming/", suffix=".csv",
        target=["arrival", "scored", "total"], partition=_day, endpoint_url=endpoint,
    )  # fmt: skip
    return fs.Pipeline(
        "s3_arrivals", [arrival, scored, total], store="memory://",
        io_managers={"default": values}, sensors=[sensor],
    )  # fmt: skip


def _csv(rows: int, base: int) -> bytes:
    return _objects.csv_bytes([{"id": i, "v": base + i} for i in range(rows)], ["id", "v"])


def test_one_run_per_new_or_overwritten_object(endpoint: str, bucket: str, s3: Any) -> None:
    pipeline = _pipeline(endpoint, bucket)
    daemon = Daemon([pipeline])
    for day, rows in (("2024-01-01", 5), ("2024-01-02", 3), ("2024-01-03", 4)):
        s3.put_object(Bucket=bucket, Key=f"incoming/{day}.csv", Body=_csv(rows, 1))
    s3.put_object(Bucket=bucket, Key="incoming/readme.txt", Body=b"not a csv")

    first = report = daemon.tick(datetime(2024, 2, 1, tzinfo=UTC))
    assert sorted(str(r.partition) for r in report.fired) == [
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
    ]
    assert all(r.status == "succeeded" for r in report.fired)
    for day, rows in (("2024-01-01", 5), ("2024-01-02", 3), ("2024-01-03", 4)):
        mat = pipeline.store.find_materialization("s3_arrivals", "total", day)
        assert mat is not None
        assert pipeline.io_manager("default").load(mat.location) == sum(
            10 * (1 + i) for i in range(rows)
        )
        scored = pipeline.store.find_materialization("s3_arrivals", "scored", day)
        assert scored is not None and scored.location.endswith(".rows.parquet")

    # Nothing new: nothing fires.
    assert daemon.tick(datetime(2024, 2, 1, 0, 1, tzinfo=UTC)).fired == ()
    # An overwritten object fires again; so does a new one.
    s3.put_object(Bucket=bucket, Key="incoming/2024-01-02.csv", Body=_csv(3, 100))
    s3.put_object(Bucket=bucket, Key="incoming/2024-01-04.csv", Body=_csv(1, 7))
    report = daemon.tick(datetime(2024, 2, 1, 0, 2, tzinfo=UTC))
    assert sorted(str(r.partition) for r in report.fired) == ["2024-01-02", "2024-01-04"]
    (rerun,) = [r for r in report.fired if str(r.partition) == "2024-01-02"]
    assert rerun.run_id is not None and rerun.status == "succeeded"
    assert rerun.key.startswith("incoming/2024-01-02.csv@")
    assert rerun.key not in {r.key for r in first.fired}  # a new run key: the new etag
    # The run was forced: the overwritten object's rows were read and scored again.
    mat = pipeline.store.find_materialization("s3_arrivals", "total", "2024-01-02")
    assert mat is not None and mat.run_id == rerun.run_id
    assert pipeline.io_manager("default").load(mat.location) == 10 * (100 + 101 + 102)
    scored = pipeline.store.find_materialization("s3_arrivals", "scored", "2024-01-02")
    assert scored is not None and scored.metadata["value"]["format"] == "rows.parquet"
    assert scored.metadata["value"]["size"] > 0 and scored.metadata["value"]["etag"]
    new = pipeline.store.find_materialization("s3_arrivals", "total", "2024-01-04")
    assert new is not None and pipeline.io_manager("default").load(new.location) == 70


def _context(cursor: str | None) -> SensorContext:
    return SensorContext("p", "s", datetime(2024, 1, 1, tzinfo=UTC), cursor=cursor)


def test_cursor_caps_and_every_key_counts(endpoint: str, bucket: str, s3: Any) -> None:
    for n in range(5):
        s3.put_object(Bucket=bucket, Key=f"in/{n}.json", Body=b"[]")
    sensor = S3ArrivalSensor(bucket, prefix="in/", max_per_tick=2, endpoint_url=endpoint)
    seen: list[str] = []
    cursor = None
    for _ in range(4):
        result = sensor(_context(cursor))
        seen += [r.tags["s3_key"] for r in result.run_requests if r.tags]
        cursor = result.cursor
    assert sorted(seen) == [f"in/{n}.json" for n in range(5)]  # every key once
    state = json.loads(cursor or "")
    assert set(state["seen"]) == {f"in/{n}.json" for n in range(5)}
    assert all(
        r.run_key.startswith("in/") and "@" in r.run_key
        for r in sensor(_context(None)).run_requests
    )


def test_a_foreign_cursor_and_bad_arguments_are_refused(endpoint: str, bucket: str) -> None:
    sensor = S3ArrivalSensor(bucket, endpoint_url=endpoint)
    with pytest.raises(UsageError, match="not an S3ArrivalSensor cursor"):
        sensor(_context("2024-01-01"))
    with pytest.raises(UsageError, match="lookback"):
        S3ArrivalSensor(bucket, lookback=timedelta(seconds=-1))
    with pytest.raises(UsageError, match="partition must be callable"):
        S3ArrivalSensor(bucket, partition="day")  # type: ignore[arg-type]
