"""The public API is what ``__init__`` exports, and FlowStone finds it by entry point."""

from __future__ import annotations

import subprocess
import sys

import flowstone_io_s3
from flowstone.protocols import BatchLoading, IOManager, ItemReader
from flowstone.registry import PluginRegistry
from flowstone_io_s3 import DynamoDBItemReader, S3IOManager, S3ItemReader


def test_all_is_pinned() -> None:
    assert flowstone_io_s3.__all__ == [
        "DynamoDBItemReader",
        "ObjectInfo",
        "S3ArrivalSensor",
        "S3IOManager",
        "S3ItemReader",
        "__version__",
        "s3_arrival_sensor",
    ]


def test_entry_points_name_the_classes() -> None:
    registry = PluginRegistry()
    assert registry.load("flowstone.io_managers", "s3") is S3IOManager
    assert registry.load("flowstone.item_readers", "s3") is S3ItemReader
    assert registry.load("flowstone.item_readers", "dynamodb") is DynamoDBItemReader


def test_the_classes_satisfy_the_protocols() -> None:
    manager = S3IOManager("some-bucket")
    assert isinstance(manager, IOManager) and isinstance(manager, BatchLoading)
    assert isinstance(S3ItemReader("some-bucket", key="k.jsonl"), ItemReader)
    assert isinstance(DynamoDBItemReader("table"), ItemReader)


def test_importing_connects_to_nothing_and_reads_no_environment() -> None:
    code = (
        "import os, sys; os.environ.clear(); import flowstone_io_s3; "
        "print('boto3' in sys.modules, 'pyarrow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]  # boto3 and pyarrow load on first use
