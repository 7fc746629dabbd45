"""Access denied by a real server: each piece names the operation that was refused and the
IAM action to grant.

A moto server of its own (a subprocess: its authorization switch is process-wide), set up
with auth off, then switched to enforcing IAM through its HTTP API (``/moto-api/reset-auth``);
each client signs as an IAM user whose policy allows ``s3:*`` but denies one action.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

import boto3
import pytest

from flowstone.errors import StorageError
from flowstone.protocols import StorageKey
from flowstone.sensors import SensorContext
from flowstone_io_s3 import S3ArrivalSensor, S3IOManager, S3ItemReader

from .conftest import _free_port


def _context() -> SensorContext:
    return SensorContext("p", "arrivals", datetime(2024, 1, 1, tzinfo=UTC), cursor=None)


ROOT = {"aws_access_key_id": "root-test", "aws_secret_access_key": "root-test-secret"}
# moto names some S3 actions after the API call (s3:ListObjectsV2); AWS says s3:ListBucket.
DENIED = {
    "no-put": ["s3:PutObject"],
    "no-get": ["s3:GetObject"],
    "no-list": ["s3:ListBucket", "s3:ListObjectsV2"],
}


class Enforcing(NamedTuple):
    endpoint: str
    bucket: str
    clients: dict[str, Any]
    stored: str  # the location of a value stored before the policies applied


@pytest.fixture(scope="module")
def enforcing() -> Iterator[Enforcing]:
    """A server that enforces IAM policies, its bucket holding ``in/rows.jsonl`` and one
    stored value, and a client per user of ``DENIED``."""
    port = _free_port()
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto server on {endpoint} did not start") from None
                time.sleep(0.1)
        where = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        root_s3 = boto3.client("s3", **where, **ROOT)
        iam = boto3.client("iam", **where, **ROOT)
        bucket = f"fs-denied-{uuid.uuid4().hex[:8]}"
        root_s3.create_bucket(Bucket=bucket)
        root_s3.put_object(Bucket=bucket, Key="in/rows.jsonl", Body=b'{"n": 1}\n')
        clients = {}
        for user, actions in DENIED.items():
            iam.create_user(UserName=user)
            policy = {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                    {"Effect": "Deny", "Action": actions, "Resource": "*"},
                ],
            }
            iam.put_user_policy(
                UserName=user, PolicyName="one-denied", PolicyDocument=json.dumps(policy)
            )
            key = iam.create_access_key(UserName=user)["AccessKey"]
            clients[user] = boto3.client(
                "s3", **where, aws_access_key_id=key["AccessKeyId"],
                aws_secret_access_key=key["SecretAccessKey"],
            )  # fmt: skip
        stored = S3IOManager(bucket, client=clients["no-get"]).store(
            StorageKey("pipe", "blob", "", "run-1"), b"value"
        )
        # From now on every request is authenticated and checked against IAM.
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth", b"0", {"Content-Type": "text/plain"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        yield Enforcing(endpoint, bucket, clients, stored)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_denied_store_names_put_object_and_writes_nothing(
    enforcing: Enforcing,
) -> None:
    endpoint, bucket, clients, _ = enforcing
    io = S3IOManager(bucket, client=clients["no-put"])
    with pytest.raises(StorageError) as caught:
        io.store(StorageKey("pipe", "blob", "p", "run-2"), b"value")
    message = str(caught.value)
    assert f"access denied: PutObject on s3://{bucket}/flowstone/pipe/blob/p/run-2/" in message
    assert f"endpoint {endpoint}" in message and "allow s3:PutObject" in message
    listed = clients["no-get"].list_objects_v2(Bucket=bucket, Prefix="flowstone/pipe/blob/p/")
    assert listed.get("KeyCount", 0) == 0


def test_a_denied_load_names_get_object(enforcing: Enforcing) -> None:
    _, bucket, clients, location = enforcing
    assert S3IOManager(bucket, client=clients["no-put"]).load(location) == b"value"
    with pytest.raises(StorageError) as caught:
        S3IOManager(bucket, client=clients["no-get"]).load(location)
    assert f"access denied: GetObject on {location}" in str(caught.value)
    assert "allow s3:GetObject" in str(caught.value)


def test_a_denied_read_names_get_object(enforcing: Enforcing) -> None:
    _, bucket, clients, _ = enforcing
    allowed = S3ItemReader(bucket, key="in/rows.jsonl", client=clients["no-put"])
    allowed.init({})
    assert allowed.read(10) == [{"n": 1}]
    allowed.close()
    reader = S3ItemReader(bucket, key="in/rows.jsonl", client=clients["no-get"])
    with pytest.raises(StorageError) as caught:
        reader.init({})
        reader.read(10)
    message = str(caught.value)
    # moto lets the HEAD through and refuses the GET; AWS would refuse the HEAD, which
    # needs s3:GetObject too.
    assert f"access denied: GetObject on s3://{bucket}/in/rows.jsonl" in message
    assert "allow s3:GetObject" in message


def test_a_denied_listing_names_list_objects(enforcing: Enforcing) -> None:
    _, bucket, clients, _ = enforcing
    allowed = S3ArrivalSensor(bucket, prefix="in/", client=clients["no-get"])
    assert [r.tags["s3_key"] for r in allowed(_context()).run_requests if r.tags] == [
        "in/rows.jsonl"
    ]
    sensor = S3ArrivalSensor(bucket, prefix="in/", client=clients["no-list"])
    with pytest.raises(StorageError) as caught:
        sensor(_context())
    message = str(caught.value)
    assert f"access denied: ListObjectsV2 on s3://{bucket}/in/" in message
    assert "allow s3:ListBucket" in message
