"""A real S3/DynamoDB-compatible server for the tests: moto in server mode on loopback,
used through boto3 over HTTP (nothing in botocore is patched)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "flowstone-test",
    "AWS_SECRET_ACCESS_KEY": "flowstone-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def endpoint() -> Iterator[str]:
    """The server's URL; boto3 finds the test credentials in the environment."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    saved = {name: os.environ.get(name) for name in _CREDENTIALS}
    os.environ.update(_CREDENTIALS)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def s3(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint)


@pytest.fixture(scope="session")
def dynamodb(endpoint: str) -> Any:
    return boto3.client("dynamodb", endpoint_url=endpoint)


@pytest.fixture
def bucket(s3: Any) -> str:
    """A fresh, empty bucket per test."""
    name = f"fs-test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name
