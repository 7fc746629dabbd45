"""Writing test objects in every format the readers read."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def digest(items: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(list(items), sort_keys=True).encode()).hexdigest()[:16]


def jsonl(items: Sequence[Any]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def json_array(items: Sequence[Any]) -> bytes:
    return (
        "[\n  " + ",\n  ".join(json.dumps(i, ensure_ascii=False) for i in items) + "\n]"
    ).encode()


def csv_bytes(rows: Sequence[dict[str, Any]], fieldnames: Sequence[str]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(fieldnames))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def parquet(rows: Sequence[dict[str, Any]], row_group_size: int) -> bytes:
    sink = io.BytesIO()
    table = pa.Table.from_pylist(list(rows)) if rows else pa.table({"id": pa.array([], pa.int64())})
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)
