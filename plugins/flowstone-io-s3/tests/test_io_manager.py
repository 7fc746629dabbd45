"""S3IOManager beyond the core contract: formats, keys, multipart, errors, load_many."""

from __future__ import annotations

import dataclasses
import socket
from typing import Any

import pyarrow as pa
import pytest

from flowstone.errors import EncodingError, StorageError, UnsafeKeyError, UsageError
from flowstone.protocols import BatchLoading, DescribedStorage, StorageKey
from flowstone_io_s3 import S3IOManager

KEY = StorageKey("pipe", "orders", "2024-01-01", "run-1")


@pytest.fixture
def io(endpoint: str, bucket: str) -> S3IOManager:
    return S3IOManager(
        bucket, prefix="values/v1", endpoint_url=endpoint, formats={"rows": "parquet"}
    )


def _object_keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_key_layout_and_attempts_write_their_own_objects(
    io: S3IOManager, s3: Any, bucket: str
) -> None:
    first = io.store(dataclasses.replace(KEY, attempt=1), {"n": 1})
    loser = io.store(dataclasses.replace(KEY, attempt=2), {"n": 2})
    item = io.store(dataclasses.replace(KEY, attempt=1, item=7), "x")
    assert first == f"s3://{bucket}/values/v1/pipe/orders/2024-01-01/run-1/1.json"
    assert loser.endswith("/run-1/2.json")
    assert item.endswith("/run-1/1.item-7.json")
    # The committed record points at attempt 1's object, which attempt 2 did not touch.
    assert io.load(first) == {"n": 1}
    assert sorted(_object_keys(s3, bucket)) == sorted(
        loc.removeprefix(f"s3://{bucket}/") for loc in (first, loser, item)
    )


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("partition", "../../etc", "'.' or '..' path step"),
        ("partition", "a/../../b", "'.' or '..' path step"),
        ("asset", "..", "'.' or '..' path step"),
        ("pipeline", "/abs", "absolute path"),
        ("run_id", "C:\\evil", "absolute path"),
        ("partition", "with\x00nul", "control character"),
        ("asset", "tab\there", "control character"),
    ],
)
def test_escaping_names_are_refused_naming_them(
    io: S3IOManager, s3: Any, bucket: str, field: str, value: str, problem: str
) -> None:
    with pytest.raises(UnsafeKeyError) as caught:
        io.store(dataclasses.replace(KEY, **{field: value}), {"n": 1})
    assert f"{field} {value!r}" in str(caught.value)
    assert problem in str(caught.value)
    assert _object_keys(s3, bucket) == []


def test_odd_but_harmless_names_are_encoded_inside_the_prefix(io: S3IOManager, bucket: str) -> None:
    location = io.store(dataclasses.replace(KEY, partition="région=île/2024 q1"), 1)
    assert location.startswith(f"s3://{bucket}/values/v1/pipe/orders/")
    assert "/r%C3%A9gion=%C3%AEle%2F2024%20q1/" in location
    assert io.load(location) == 1


@pytest.mark.parametrize(
    "location",
    [
        "s3://other-bucket/values/v1/pipe/orders/p/run-1/1.json",
        "s3://{bucket}/elsewhere/pipe/orders/p/run-1/1.json",
        "s3://{bucket}/values/v1/pipe/../p/run-1/1.json",
        "s3://{bucket}/values/v1/pipe/orders/p/run-1/1.pickle",
        "values/v1/pipe/orders/p/run-1/1.json",
    ],
)
def test_foreign_or_forged_locations_are_refused(
    io: S3IOManager, bucket: str, location: str
) -> None:
    with pytest.raises(UnsafeKeyError):
        io.load(location.format(bucket=bucket))


def test_arrow_tables_and_configured_rows_are_parquet(
    io: S3IOManager, s3: Any, bucket: str
) -> None:
    table = pa.table({"id": [1, 2, 3], "name": ["a", "b", None]})
    location = io.store(dataclasses.replace(KEY, asset="table"), table)
    assert location.endswith(".arrow.parquet")
    loaded = io.load(location)
    assert isinstance(loaded, pa.Table) and loaded.equals(table)
    raw = s3.get_object(Bucket=bucket, Key=location.removeprefix(f"s3://{bucket}/"))["Body"].read()
    assert raw[:4] == b"PAR1"

    rows = [{"id": 1, "tags": ["x"], "score": 0.5}, {"id": 2, "tags": [], "score": None}]
    rows_location = io.store(dataclasses.replace(KEY, asset="rows"), rows)
    assert rows_location.endswith(".rows.parquet")
    assert io.load(rows_location) == rows
    # The same rows for an asset without a format stay lossless JSON.
    assert io.store(KEY, rows).endswith(".json")


def test_parquet_format_refuses_what_parquet_would_change(
    io: S3IOManager, s3: Any, bucket: str
) -> None:
    for value in ([{"a": 1}, {"b": 2}], {"not": "rows"}, [{"a": 1}, {"a": "mixed"}]):
        with pytest.raises(EncodingError, match="'rows'"):
            io.store(dataclasses.replace(KEY, asset="rows"), value)
    assert _object_keys(s3, bucket) == []


def test_bytes_are_raw_and_describe_reports_size_etag_format(
    io: S3IOManager, s3: Any, bucket: str
) -> None:
    location = io.store(KEY, b"\x00raw\xff")
    info = io.describe(location)
    head = s3.head_object(Bucket=bucket, Key=location.removeprefix(f"s3://{bucket}/"))
    assert (info.size, info.etag, info.format) == (5, head["ETag"].strip('"'), "bin")


def test_large_values_go_up_in_parts(endpoint: str, bucket: str, s3: Any) -> None:
    io = S3IOManager(
        bucket, endpoint_url=endpoint, multipart_threshold=5 * 2**20, part_size=5 * 2**20
    )
    payload = bytes(range(256)) * (12 * 2**20 // 256 + 3)  # 12 MiB + 768 bytes: 3 parts
    location = io.store(KEY, payload)
    head = s3.head_object(Bucket=bucket, Key=location.removeprefix(f"s3://{bucket}/"))
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag names its part count
    assert io.load(location) == payload
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_load_many_is_batch_loading_and_keeps_order(io: S3IOManager) -> None:
    assert isinstance(io, BatchLoading)
    locations = [io.store(dataclasses.replace(KEY, partition=f"p{i}"), {"i": i}) for i in range(12)]
    wanted = [locations[i] for i in (11, 0, 5, 5, 3)]
    assert io.load_many(wanted) == [{"i": 11}, {"i": 0}, {"i": 5}, {"i": 5}, {"i": 3}]


def test_corrupt_parquet_names_the_object(io: S3IOManager, s3: Any, bucket: str) -> None:
    location = io.store(dataclasses.replace(KEY, asset="table"), pa.table({"a": [1]}))
    s3.put_object(Bucket=bucket, Key=location.removeprefix(f"s3://{bucket}/"), Body=b"PAR1 broken")
    with pytest.raises(StorageError, match="is not readable Parquet") as caught:
        io.load(location)
    assert location in str(caught.value)


def test_missing_bucket_fails_at_first_use_naming_bucket_and_endpoint(endpoint: str) -> None:
    io = S3IOManager("no-such-bucket-here", endpoint_url=endpoint)
    with pytest.raises(StorageError) as caught:
        io.store(KEY, {"n": 1})
    message = str(caught.value)
    assert "'no-such-bucket-here' does not exist" in message
    assert endpoint in message


def test_wrong_endpoint_fails_naming_it() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    wrong = f"http://127.0.0.1:{port}"
    io = S3IOManager("some-bucket", endpoint_url=wrong)
    with pytest.raises(StorageError) as caught:
        io.store(KEY, {"n": 1})
    assert wrong in str(caught.value)
    assert "some-bucket" in str(caught.value)


def test_bad_configuration_is_refused(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    monkeypatch.delenv("FLOWSTONE_S3_BUCKET", raising=False)
    with pytest.raises(UsageError, match="FLOWSTONE_S3_BUCKET"):
        S3IOManager()
    monkeypatch.setenv("FLOWSTONE_S3_BUCKET", "from-env")
    assert S3IOManager().bucket == "from-env"
    with pytest.raises(UsageError, match="prefix"):
        S3IOManager("b", prefix="a/../b")
    with pytest.raises(UsageError, match="unknown format"):
        S3IOManager("b", formats={"x": "pickle"})  # type: ignore[dict-item]
    with pytest.raises(UsageError, match="part_size"):
        S3IOManager("b", part_size=1024)
    with pytest.raises(UsageError, match="endpoint_url"):
        S3IOManager("b", endpoint_url="127.0.0.1:9000")


def test_registered_by_entry_point(endpoint: str, bucket: str) -> None:
    from flowstone.registry import PluginRegistry

    io = PluginRegistry().create(
        "flowstone.io_managers", "s3", bucket=bucket, endpoint_url=endpoint
    )
    assert isinstance(io, S3IOManager)


def test_pandas_frames_are_parquet_with_index_and_dtypes(io: S3IOManager) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {"qty": [1, 2, 3], "price": [0.5, 1.25, None], "sku": ["a", "b", "c"]},
        index=pd.Index(["x", "y", "z"], name="row"),
    )
    location = io.store(dataclasses.replace(KEY, asset="frame"), frame)
    assert location.endswith(".pandas.parquet")
    loaded = io.load(location)
    pd.testing.assert_frame_equal(loaded, frame)


def test_service_errors_name_the_operation_and_the_fix() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    from flowstone_io_s3.connection import Connection, service_error

    connection = Connection("s3", endpoint_url="http://127.0.0.1:9")
    denied = ClientError(
        {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject"
    )
    error = service_error(denied, operation="PutObject", target="s3://b/k", connection=connection)
    assert str(error).startswith(
        "access denied: PutObject on s3://b/k (endpoint http://127.0.0.1:9)"
    )
    assert "allow s3:PutObject" in str(error)
    unreachable = EndpointConnectionError(endpoint_url="http://127.0.0.1:9/b")
    error = service_error(
        unreachable, operation="GetObject", target="s3://b/k", connection=connection
    )
    assert "cannot talk to endpoint http://127.0.0.1:9" in str(error)
    missing = ClientError({"Error": {"Code": "NoSuchBucket", "Message": "nope"}}, "GetObject")
    error = service_error(missing, operation="GetObject", target="s3://b/k", connection=connection)
    assert "bucket 'b' does not exist at endpoint http://127.0.0.1:9" in str(error)


def test_store_described_reports_what_the_put_returned(
    io: S3IOManager, s3: Any, bucket: str
) -> None:
    assert isinstance(io, DescribedStorage)
    location, facts = io.store_described(dataclasses.replace(KEY, asset="rows"), [{"a": 1}])
    head = s3.head_object(Bucket=bucket, Key=location.removeprefix(f"s3://{bucket}/"))
    assert facts == {
        "size": head["ContentLength"],
        "etag": head["ETag"].strip('"'),
        "format": "rows.parquet",
    }


def test_an_asset_declares_its_own_format_in_metadata(io: S3IOManager) -> None:
    rows = [{"a": 1}, {"a": 2}]
    declared = dataclasses.replace(KEY, asset="declared", metadata={"format": "parquet"})
    location = io.store(declared, rows)
    assert location.endswith(".rows.parquet") and io.load(location) == rows
    # The manager's own formats= wins over the asset's metadata.
    overridden = dataclasses.replace(KEY, asset="rows", metadata={"format": "json"})
    assert io.store(overridden, rows).endswith(".rows.parquet")
    with pytest.raises(UsageError, match="asset 'bad' metadata: unknown format 'pickle'"):
        io.store(dataclasses.replace(KEY, asset="bad", metadata={"format": "pickle"}), rows)
