"""S3ItemReader beyond the contract: errors that name object and offset, changed objects,
broken transfers resumed from the last good byte, long lines, CR/LF across chunks."""

from __future__ import annotations

import csv
import io
from typing import Any

import pyarrow.parquet as pq
import pytest

from flowstone.errors import StorageError, UsageError
from flowstone_io_s3 import S3ItemReader

from . import _objects
from ._flaky_proxy import FlakyProxy

CHUNK = 65536


def _reader(endpoint: str, bucket: str, **kwargs: Any) -> S3ItemReader:
    reader = S3ItemReader(bucket, endpoint_url=endpoint, chunk_size=CHUNK, **kwargs)
    reader.init({})
    return reader


def _drain(reader: S3ItemReader, page: int = 100) -> list[Any]:
    out: list[Any] = []
    while items := reader.read(page):
        out.extend(items)
    return out


def test_malformed_json_line_names_object_line_and_byte_after_the_good_part(
    endpoint: str, bucket: str, s3: Any
) -> None:
    good = [{"n": i} for i in range(3)]
    data = _objects.jsonl(good) + b'{"n": oops}\n' + _objects.jsonl([{"n": 9}])
    s3.put_object(Bucket=bucket, Key="bad.jsonl", Body=data)
    reader = _reader(endpoint, bucket, key="bad.jsonl")
    assert reader.read(10) == good
    position = reader.checkpoint()
    with pytest.raises(StorageError) as caught:
        reader.read(10)
    offset = len(_objects.jsonl(good))
    assert f"s3://{bucket}/bad.jsonl, line 4 (byte {offset}): malformed JSON" in str(caught.value)
    assert reader.checkpoint() == position  # still at the last good record
    with pytest.raises(StorageError):
        reader.read(10)  # and it does not skip the bad record


def test_corrupt_csv_names_object_line_and_byte(endpoint: str, bucket: str, s3: Any) -> None:
    data = b'id,text\n1,"fine"\n2,"never closed\n3,x\n'
    s3.put_object(Bucket=bucket, Key="bad.csv", Body=data)
    reader = _reader(endpoint, bucket, key="bad.csv")
    assert reader.read(10) == [{"id": "1", "text": "fine"}]
    with pytest.raises(StorageError) as caught:
        reader.read(10)
    assert f"s3://{bucket}/bad.csv, line 3 (byte 17): quoted field is never closed" in str(
        caught.value
    )
    s3.put_object(Bucket=bucket, Key="wide.csv", Body=b"a,b\n1,2\n1,2,3\n")
    wide = _reader(endpoint, bucket, key="wide.csv")
    assert wide.read(1) == [{"a": "1", "b": "2"}]
    with pytest.raises(StorageError, match=r"wide.csv, line 3 \(byte 8\): 3 fields but 2 columns"):
        wide.read(1)


def test_corrupt_parquet_names_object_and_offset(endpoint: str, bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="bad.parquet", Body=b"x" * 100)
    reader = S3ItemReader(bucket, key="bad.parquet", endpoint_url=endpoint)
    reader.init({})
    with pytest.raises(
        StorageError, match=r"bad.parquet is not a readable Parquet file \(footer at byte 92\)"
    ):
        reader.read(5)

    rows = [{"id": i, "s": f"v{i}" * 50} for i in range(100)]
    good = _objects.parquet(rows, row_group_size=10)
    column = pq.ParquetFile(io.BytesIO(good)).metadata.row_group(1).column(1)
    start, size = column.data_page_offset, column.total_compressed_size
    broken = good[:start] + b"\xff" * size + good[start + size :]
    s3.put_object(Bucket=bucket, Key="torn.parquet", Body=broken)
    torn = S3ItemReader(bucket, key="torn.parquet", endpoint_url=endpoint)
    torn.init({})
    assert torn.read(15) == rows[:10]  # row group 0 is fine
    first_column = pq.ParquetFile(io.BytesIO(good)).metadata.row_group(1).column(0)
    first = first_column.dictionary_page_offset or first_column.data_page_offset
    with pytest.raises(StorageError, match=rf"torn.parquet, row group 1 \(byte {first}\)"):
        torn.read(15)


def test_a_checkpoint_of_a_changed_object_is_refused(endpoint: str, bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="a.jsonl", Body=_objects.jsonl(range(10)))
    reader = _reader(endpoint, bucket, key="a.jsonl")
    reader.read(3)
    checkpoint = reader.checkpoint()
    reader.close()
    s3.put_object(Bucket=bucket, Key="a.jsonl", Body=_objects.jsonl(range(100, 110)))
    fresh = _reader(endpoint, bucket, key="a.jsonl")
    with pytest.raises(StorageError, match="changed since the checkpoint"):
        fresh.restore(checkpoint)


def test_an_object_replaced_while_read_fails_instead_of_mixing_versions(
    endpoint: str, bucket: str, s3: Any
) -> None:
    rows = [{"n": i, "pad": "x" * 1000} for i in range(400)]  # ~400 KiB: 7 chunks
    s3.put_object(Bucket=bucket, Key="big.jsonl", Body=_objects.jsonl(rows))
    reader = _reader(endpoint, bucket, key="big.jsonl")
    assert reader.read(10) == rows[:10]
    s3.put_object(Bucket=bucket, Key="big.jsonl", Body=_objects.jsonl(rows[::-1]))
    with pytest.raises(StorageError, match="was replaced while it was being read"):
        _drain(reader)


def test_broken_transfers_resume_from_the_last_good_byte(
    endpoint: str, bucket: str, s3: Any
) -> None:
    rows = [{"n": i, "pad": "y" * 700} for i in range(600)]
    s3.put_object(Bucket=bucket, Key="long.jsonl", Body=_objects.jsonl(rows))
    with FlakyProxy(endpoint, cuts=3) as proxy:
        reader = _reader(proxy.url, bucket, key="long.jsonl")
        try:
            assert _drain(reader, 37) == rows
        finally:
            reader.close()
    assert len(proxy.cut_ranges) == 3  # three responses really were cut short


def test_a_line_much_longer_than_a_chunk(endpoint: str, bucket: str, s3: Any) -> None:
    items = [{"n": 1}, {"blob": "z" * (3 * 2**20)}, {"n": 3}]
    s3.put_object(Bucket=bucket, Key="long-line.jsonl", Body=_objects.jsonl(items))
    assert _drain(_reader(endpoint, bucket, key="long-line.jsonl")) == items


def test_crlf_split_across_chunks_counts_one_line(endpoint: str, bucket: str, s3: Any) -> None:
    first = b'{"pad": "' + b"p" * (CHUNK - 12) + b'"}\r'  # ends exactly at the chunk edge
    assert len(first) == CHUNK
    data = first + b'\n{"n": 2}\r\n\r\n{"n": 3}'
    s3.put_object(Bucket=bucket, Key="crlf.jsonl", Body=data)
    reader = _reader(endpoint, bucket, key="crlf.jsonl")
    assert reader.read(2) == [{"pad": "p" * (CHUNK - 12)}, {"n": 2}]
    assert reader.checkpoint()["at"] == {"offset": CHUNK + 11, "line": 2}
    assert reader.read(1) == [{"n": 3}]
    assert reader.checkpoint()["at"] == {"offset": len(data), "line": 4}
    assert reader.read(1) == []


def test_csv_options_tsv_and_given_fieldnames(endpoint: str, bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="t.tsv.gz", Body=_objects.gz(b"a\tb\n1\t2\n"))
    assert _drain(_reader(endpoint, bucket, key="t.tsv.gz")) == [{"a": "1", "b": "2"}]
    s3.put_object(Bucket=bucket, Key="h.csv", Body=b"1;2\n3\n")
    rows = _drain(_reader(endpoint, bucket, key="h.csv", fieldnames=["x", "y"], dialect=_Semicolon))
    assert rows == [{"x": "1", "y": "2"}, {"x": "3", "y": None}]


class _Semicolon(csv.excel):
    delimiter = ";"


def test_prefix_listing_with_start_after_and_max_objects(
    endpoint: str, bucket: str, s3: Any
) -> None:
    for n in range(5):
        s3.put_object(Bucket=bucket, Key=f"in/{n}.jsonl", Body=_objects.jsonl([n]))
    reader = _reader(endpoint, bucket, prefix="in/", start_after="in/0.jsonl", max_objects=3)
    assert _drain(reader) == [1, 2, 3]
    listed = _reader(endpoint, bucket, prefix="in/", format="objects", max_objects=2)
    assert [o["key"] for o in _drain(listed)] == ["in/0.jsonl", "in/1.jsonl"]


def test_bad_arguments_are_refused(endpoint: str, bucket: str, s3: Any) -> None:
    with pytest.raises(UsageError, match="exactly one of key=, prefix= or manifest="):
        S3ItemReader(bucket, key="a", prefix="b")
    with pytest.raises(UsageError, match="unknown format"):
        S3ItemReader(bucket, key="a", format="xml")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="chunk_size"):
        S3ItemReader(bucket, key="a", chunk_size=10)
    s3.put_object(Bucket=bucket, Key="data.xml", Body=b"<a/>")
    with pytest.raises(StorageError, match="cannot tell the format"):
        _reader(endpoint, bucket, key="data.xml").read(1)
    with pytest.raises(StorageError, match="does not exist"):
        _reader(endpoint, bucket + "-missing", key="data.jsonl").read(1)


_MEASURE = """
import sys, tracemalloc
from flowstone_io_s3 import S3ItemReader
endpoint, bucket, key = sys.argv[1:4]
reader = S3ItemReader(bucket, key=key, endpoint_url=endpoint, chunk_size=256 * 1024)
reader.init({})
count = len(reader.read(500))  # the client (and botocore's service model) set up first
tracemalloc.start()
while page := reader.read(500):
    count += len(page)
print(count, tracemalloc.get_traced_memory()[1])
reader.close()
"""


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_memory_stays_flat_in_the_object_size(
    endpoint: str, bucket: str, s3: Any, gzip: bool
) -> None:
    """A 16 MB object read in 256 KiB ranges never holds more than a few ranges' worth of
    Python objects. Measured in a child process: the S3 server runs in this one, and
    tracemalloc would count its allocations too."""
    import subprocess
    import sys

    rows = [{"n": i, "pad": "m" * 60} for i in range(200_000)]
    data = _objects.jsonl(rows)
    assert len(data) > 15_000_000
    key = "flat.jsonl.gz" if gzip else "flat.jsonl"
    s3.put_object(Bucket=bucket, Key=key, Body=_objects.gz(data) if gzip else data)
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, endpoint, bucket, key],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    count, peak = map(int, out.stdout.split())
    assert count == 200_000
    assert peak < 4_000_000, f"peak {peak / 1e6:.1f} MB of Python objects for a 16 MB object"
