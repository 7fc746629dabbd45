"""FlowStone on Amazon S3 (and S3-compatible servers): an IO manager, streaming S3 and
DynamoDB item readers, and an S3 arrival sensor.

Importing this package has no side effects: nothing connects, nothing reads the
environment, nothing registers. FlowStone finds the IO manager and readers through the
entry points of this distribution (``s3`` in ``flowstone.io_managers``; ``s3`` and
``dynamodb`` in ``flowstone.item_readers``).
"""

from __future__ import annotations

from flowstone_io_s3._version import __version__
from flowstone_io_s3.dynamodb import DynamoDBItemReader
from flowstone_io_s3.io_manager import ObjectInfo, S3IOManager
from flowstone_io_s3.reader import S3ItemReader
from flowstone_io_s3.sensor import S3ArrivalSensor, s3_arrival_sensor

__all__ = [
    "DynamoDBItemReader",
    "ObjectInfo",
    "S3ArrivalSensor",
    "S3IOManager",
    "S3ItemReader",
    "__version__",
    "s3_arrival_sensor",
]
