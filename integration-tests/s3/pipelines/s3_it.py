"""S3 scenarios for the integration tests (loaded by the test process and the workers).

Configured by the environment: ``FLOWSTONE_S3_BUCKET`` (the bucket), ``FLOWSTONE_IT_S3``
(the S3 server's URL) and the AWS test credentials; values are stored in S3 (scatter
results as Parquet), run state in Postgres, steps on Celery workers.
"""

from __future__ import annotations

import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import flowstone as fs
from flowstone_io_s3 import S3IOManager, S3ItemReader, s3_arrival_sensor

ENDPOINT = os.environ.get("FLOWSTONE_IT_S3", "")
BUCKET = os.environ.get("FLOWSTONE_S3_BUCKET", "")


def stem(key: str) -> str:
    """The partition of an arrived object: its file name without ``.csv``."""
    return key.rsplit("/", 1)[-1].removesuffix(".csv")


@fs.asset
def arrival(context: fs.Context) -> str:
    return f"incoming/{context.partition_key}.csv"


@fs.asset(scatter=fs.Scatter(
    reader=S3ItemReader(BUCKET, key=lambda deps: deps["arrival"], endpoint_url=ENDPOINT),
    batching=fs.Batching(max_items=4), page_size=10, max_concurrent=8))
def scored(context: fs.Context, arrival: str) -> list[dict[str, Any]]:
    batch = context.batch
    assert batch is not None
    return [{"id": int(r["id"]), "score": int(r["qty"]) * 10, "object": arrival}
            for r in batch.items]


@fs.asset
def summary(scored: list[dict[str, Any]]) -> dict[str, int]:
    return {"rows": len(scored), "total": sum(r["score"] for r in scored),
            "first": scored[0]["id"] if scored else -1}


class KillingS3Reader(S3ItemReader):
    """An S3 reader that SIGKILLs its own worker process after page 3, once per marker."""

    pages = 0

    def read(self, max_items: int) -> list[Any]:
        page = super().read(max_items)
        self.pages += 1
        marker = Path(os.environ["FLOWSTONE_IT_DIR"]) / "s3-reader-killed"
        if self.pages == 3 and not marker.exists():
            marker.write_text(repr(self.checkpoint()))
            os.kill(os.getpid(), signal.SIGKILL)
        return page


@fs.asset(scatter=fs.Scatter(
    reader=KillingS3Reader(BUCKET, key=lambda deps: f"big/{deps['arrival'].split('/')[-1]}",
                           endpoint_url=ENDPOINT, chunk_size=65536),
    page_size=25, max_concurrent=16))
def killed_rows(context: fs.Context, arrival: str) -> int:
    return int(context.scatter_item["id"])


pipeline = fs.Pipeline(
    "s3_it",
    [arrival, scored, summary, killed_rows],
    io_managers={"default": S3IOManager(prefix="it-values", endpoint_url=ENDPOINT,
                                        formats={"scored": "parquet"})},
    sensors=[s3_arrival_sensor("arrivals", bucket=BUCKET, prefix="incoming/", suffix=".csv",
                               target=["arrival", "scored", "summary"], partition=stem,
                               endpoint_url=ENDPOINT, interval=timedelta(seconds=1))],
)
