"""S3IOManager integrity: every stored value carries a whole-object CRC32 that S3 keeps with
it, and a load whose bytes do not match it is refused, naming the object."""

from __future__ import annotations

import base64
import random
import zlib
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config

from flowstone.errors import StorageError
from flowstone.protocols import StorageKey
from flowstone_io_s3 import S3IOManager

from ._flaky_proxy import FlakyProxy

KEY = StorageKey("pipe", "blob", "p", "run-1")
PART = 5 * 2**20  # S3's smallest part


def _crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def _payload(size: int) -> bytes:
    # Position-dependent content: a part written at the wrong offset cannot compare equal.
    return random.Random(size).randbytes(size)


@pytest.fixture
def proxy(endpoint: str) -> Iterator[FlakyProxy]:
    with FlakyProxy(endpoint) as running:
        yield running


def _manager(bucket: str, url: str, client_config: Config | None = None) -> S3IOManager:
    client = None
    if client_config is not None:
        client = boto3.client("s3", endpoint_url=url, config=client_config)
    return S3IOManager(
        bucket,
        endpoint_url=url,
        multipart_threshold=PART,
        part_size=PART,
        client=client,
    )


@pytest.mark.parametrize(
    ("size", "client_config"),
    [
        (1000, None),  # one PUT
        (2 * PART + 17, None),  # three parts
        # A client configured to validate only when asked: the manager asks.
        (1000, Config(response_checksum_validation="when_required")),
        (2 * PART + 17, Config(response_checksum_validation="when_required")),
    ],
    ids=["put", "parts", "put-when-required-client", "parts-when-required-client"],
)
def test_a_value_damaged_in_transit_is_refused_naming_the_object(
    proxy: FlakyProxy, bucket: str, size: int, client_config: Config | None
) -> None:
    io = _manager(bucket, proxy.url, client_config)
    payload = _payload(size)
    location = io.store(KEY, payload)
    proxy.corrupt = 1
    with pytest.raises(StorageError) as caught:
        io.load(location)
    message = str(caught.value)
    assert proxy.corrupted, "the proxy damaged no response"
    assert location in message
    assert "do not match the CRC32 checksum S3 stored with the object" in message
    assert "re-materialize" in message and "cannot talk to endpoint" not in message
    # Nothing was wrong at rest: the next, undamaged transfer loads the value.
    assert io.load(location) == payload


def test_load_many_refuses_a_damaged_value_too(proxy: FlakyProxy, bucket: str) -> None:
    io = _manager(bucket, proxy.url)
    values = [_payload(100 + i) for i in range(3)]
    locations = [
        io.store(StorageKey("pipe", "blob", f"p{i}", "run-1"), v) for i, v in enumerate(values)
    ]
    proxy.corrupt = 1
    with pytest.raises(StorageError, match="do not match the CRC32 checksum"):
        io.load_many(locations)
    assert io.load_many(locations) == values


@pytest.mark.parametrize(
    "size",
    [PART, PART + 1, 2 * PART - 1, 2 * PART, 2 * PART + 1],
    ids=["one-full-part", "one-byte-over", "two-parts-minus-one", "two-full-parts", "two-plus-one"],
)
def test_parts_around_part_boundaries_keep_every_byte_and_a_full_object_checksum(
    endpoint: str, bucket: str, s3: Any, size: int
) -> None:
    io = _manager(bucket, endpoint)
    payload = _payload(size)
    location = io.store(KEY, payload)
    object_key = location.removeprefix(f"s3://{bucket}/")
    head = s3.head_object(Bucket=bucket, Key=object_key, ChecksumMode="ENABLED")
    parts = -(-size // PART)
    assert head["ETag"].strip('"').endswith(f"-{parts}")  # really stored in parts
    assert head["ContentLength"] == size
    # One CRC32 of the whole object (not a checksum of part checksums), so a GET of the
    # object is checked end to end.
    assert (head["ChecksumCRC32"], head["ChecksumType"]) == (_crc32(payload), "FULL_OBJECT")
    assert io.load(location) == payload


def test_a_single_put_stores_its_crc32(endpoint: str, bucket: str, s3: Any) -> None:
    # Even from a client that computes request checksums only when an operation needs them.
    client = boto3.client(
        "s3", endpoint_url=endpoint, config=Config(request_checksum_calculation="when_required")
    )
    io = S3IOManager(bucket, client=client)
    payload = _payload(4321)
    location = io.store(KEY, payload)
    head = s3.head_object(
        Bucket=bucket, Key=location.removeprefix(f"s3://{bucket}/"), ChecksumMode="ENABLED"
    )
    assert head["ChecksumCRC32"] == _crc32(payload)


def test_a_value_stored_in_parts_without_a_checksum_still_loads(
    endpoint: str, bucket: str, s3: Any
) -> None:
    # As this manager stored large values before it asked for FULL_OBJECT checksums (and
    # as other writers may): no whole-object checksum, so the GET cannot be checked, and
    # the value loads as it is rather than becoming unreadable.
    io = _manager(bucket, endpoint)
    payload = _payload(PART + 5)
    object_key = "flowstone/pipe/blob/p/run-1/1.bin"
    upload = s3.create_multipart_upload(Bucket=bucket, Key=object_key)
    parts = []
    for number, start in enumerate((0, PART), start=1):
        response = s3.upload_part(
            Bucket=bucket, Key=object_key, UploadId=upload["UploadId"], PartNumber=number,
            Body=payload[start : start + PART],
        )  # fmt: skip
        parts.append({"PartNumber": number, "ETag": response["ETag"]})
    s3.complete_multipart_upload(
        Bucket=bucket, Key=object_key, UploadId=upload["UploadId"],
        MultipartUpload={"Parts": parts},
    )  # fmt: skip
    head = s3.head_object(Bucket=bucket, Key=object_key, ChecksumMode="ENABLED")
    assert "ChecksumCRC32" not in head
    assert io.load(f"s3://{bucket}/{object_key}") == payload
