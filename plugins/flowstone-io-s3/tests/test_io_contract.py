"""S3IOManager passes the core IO manager contract against a real (moto) S3 server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flowstone.testing.io_contract import IOManagerContract
from flowstone_io_s3 import S3IOManager


class TestS3IOManager(IOManagerContract):
    supports_batch_loading = True

    supports_batch_loading = True

    @pytest.fixture
    def io_manager(self, endpoint: str, bucket: str) -> Iterator[S3IOManager]:
        yield S3IOManager(bucket, prefix="contract", endpoint_url=endpoint)
