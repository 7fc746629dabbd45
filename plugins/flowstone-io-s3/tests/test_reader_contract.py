"""S3ItemReader passes the core ItemReaderContract in every format, against moto's server.

Items are large enough (tens of KiB) that objects span several 64 KiB ranged GETs, so
lines, CSV records and JSON values cross chunk boundaries.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from flowstone.testing.reader_contract import ItemReaderContract
from flowstone_io_s3 import S3ItemReader

from . import _objects

CHUNK = 65536


class _S3Contract(ItemReaderContract):
    endpoint = ""
    bucket = ""
    client: Any = None

    @pytest.fixture(autouse=True)
    def _server(self, endpoint: str, bucket: str, s3: Any) -> Iterator[None]:
        self.endpoint, self.bucket, self.client = endpoint, bucket, s3
        yield

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def reader(self, **kwargs: Any) -> S3ItemReader:
        return S3ItemReader(self.bucket, endpoint_url=self.endpoint, chunk_size=CHUNK, **kwargs)


def _records(n: int = 7) -> list[dict[str, Any]]:
    # Varied sizes around the chunk size, unicode, a quote, a newline, a comma.
    return [{"id": i, "text": f'row {i} ünï "q", x\n y ' + "z" * (9000 * i + 17)} for i in range(n)]


class TestJsonLines(_S3Contract):
    def sample_items(self) -> list[Any]:
        return _records()

    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> S3ItemReader:
        key = f"in/{_objects.digest(items)}.jsonl"
        self.put(key, _objects.jsonl(items))
        return self.reader(key=key)


class TestGzipJsonLines(TestJsonLines):
    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> S3ItemReader:
        key = f"in/{_objects.digest(items)}.jsonl.gz"
        self.put(key, _objects.gz(_objects.jsonl(items)))
        return self.reader(key=key)


class TestJsonArray(TestJsonLines):
    def sample_items(self) -> list[Any]:
        return [*_records(5), 12345678901234567890, "plain", [1, [2]], None, 2.5]

    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> S3ItemReader:
        key = f"in/{_objects.digest(items)}.json"
        self.put(key, _objects.json_array(items))
        return self.reader(key=key)


class TestCsv(_S3Contract):
    def sample_items(self) -> list[Any]:
        return [{"id": str(r["id"]), "text": r["text"]} for r in _records()]

    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> S3ItemReader:
        key = f"in/{_objects.digest(items)}.csv"
        self.put(key, b"\xef\xbb\xbf" + _objects.csv_bytes(items, ["id", "text"]))
        return self.reader(key=key)


class TestParquet(_S3Contract):
    def sample_items(self) -> list[Any]:
        return [{"id": r["id"], "text": r["text"], "score": r["id"] / 2} for r in _records(9)]

    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> S3ItemReader:
        key = f"in/{_objects.digest(items)}.parquet"
        self.put(key, _objects.parquet(items, row_group_size=2))
        return self.reader(key=key)


class TestManifestOfObjects(_S3Contract):
    """Several objects of different formats, listed by a manifest (an empty one included)."""

    def sample_items(self) -> list[Any]:
        return [{"id": i, "pad": "p" * 20000} for i in range(8)]

    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> S3ItemReader:
        tag = _objects.digest(items)
        parts = [items[:3], [], items[3:5], items[5:]]
        keys = [f"m/{tag}/0.jsonl", f"m/{tag}/1.jsonl", f"m/{tag}/2.parquet", f"m/{tag}/3.json"]
        self.put(keys[0], _objects.jsonl(parts[0]))
        self.put(keys[1], b"")
        self.put(keys[2], _objects.parquet(parts[2], row_group_size=1))
        self.put(keys[3], _objects.json_array(parts[3]))
        self.put(f"m/{tag}/manifest.json", json.dumps(keys).encode())
        return self.reader(manifest=f"m/{tag}/manifest.json")


class TestPrefixOfObjects(_S3Contract):
    """Every object under a prefix with a suffix filter; rows of all of them, in key order."""

    def sample_items(self) -> list[Any]:
        return [{"id": i, "pad": "q" * 30000} for i in range(7)]

    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> S3ItemReader:
        tag = _objects.digest(items)
        for n, start in enumerate(range(0, len(items), 3)):
            self.put(
                f"p/{tag}/part-{n}.jsonl.gz", _objects.gz(_objects.jsonl(items[start : start + 3]))
            )
        self.put(f"p/{tag}/_SUCCESS", b"")
        return self.reader(prefix=f"p/{tag}/", suffix=".jsonl.gz")


class TestListedObjects(_S3Contract):
    """format='objects': the objects themselves, for one scatter item per object."""

    def sample_items(self) -> list[Any]:
        return [f"k-{i:02d}.csv" for i in range(6)]

    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> S3ItemReader:
        tag = _objects.digest(items)
        for key in items:
            self.put(f"o/{tag}/{key}", key.encode())
        return _KeysOnly(self.reader(prefix=f"o/{tag}/", format="objects"), f"o/{tag}/")


class _KeysOnly:
    """Adapts listed-object items to their key names, so the suite can compare them."""

    def __init__(self, inner: S3ItemReader, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def __copy__(self) -> _KeysOnly:
        import copy

        return _KeysOnly(copy.copy(self.inner), self.prefix)

    def init(self, deps: Any) -> None:
        self.inner.init(deps)

    def read(self, max_items: int) -> list[Any]:
        page = self.inner.read(max_items)
        assert all(set(o) == {"bucket", "key", "size", "etag"} for o in page)
        return [o["key"].removeprefix(self.prefix) for o in page]

    def count(self) -> int | None:
        return self.inner.count()

    def checkpoint(self) -> dict[str, Any]:
        return self.inner.checkpoint()

    def restore(self, checkpoint: Any) -> None:
        self.inner.restore(checkpoint)

    def close(self) -> None:
        self.inner.close()
