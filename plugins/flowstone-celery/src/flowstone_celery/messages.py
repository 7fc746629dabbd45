"""The step message: the only thing FlowStone puts on the broker.

A message names a step, nothing more::

    {"v": 1, "run_id": "4f1c...", "pipeline": "etl", "asset": "clean",
     "partition": "2024-01-01", "attempt": 1}

Every field is a JSON primitive and is validated strictly on the way in; a worker resolves
``pipeline`` and ``asset`` against the pipelines it was started with. Nothing from a message
is ever imported or evaluated.

One message may carry a list of up to :data:`MAX_BATCH` such objects, which the worker
runs one after the other (:func:`parse_batch`): steps of different runs when many runs
start at once (``Pipeline.run_many``), or a pack of one run's ready steps when they
outnumber the workers' slots (:mod:`flowstone_celery.packing`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flowstone.errors import FlowStoneError
from flowstone.records import StepRecord

__all__ = ["MAX_BATCH", "MESSAGE_VERSION", "MessageError", "StepMessage", "parse_batch",
           "parse_message"]

MESSAGE_VERSION = 1
MAX_BATCH = 64
"""The most steps one message may carry."""
MAX_PARTITION_LENGTH = 1024
_RUN_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
_PIPELINE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_ASSET = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")
_FIELDS = frozenset({"v", "run_id", "pipeline", "asset", "partition", "attempt"})


class MessageError(FlowStoneError):
    """A step message is malformed; it is logged and dropped, never retried."""


@dataclass(frozen=True, slots=True)
class StepMessage:
    """One step to run: ``(run_id, asset, partition)`` of pipeline ``pipeline``."""

    run_id: str
    pipeline: str
    asset: str
    partition: str
    attempt: int = 0

    @classmethod
    def for_step(cls, pipeline: str, step: StepRecord, run_id: str) -> StepMessage:
        return cls(step.run_id or run_id, pipeline, step.asset, step.partition, step.attempt)

    def to_json(self) -> dict[str, Any]:
        """The wire form (a dict of primitives)."""
        return {
            "v": MESSAGE_VERSION,
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "asset": self.asset,
            "partition": self.partition,
            "attempt": self.attempt,
        }


def _text(body: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = body.get(name)
    if type(value) is not str or not pattern.match(value):
        raise MessageError(f"field {name!r} is missing or not a valid name")
    return value


def parse_message(body: object) -> StepMessage:
    """Validate a decoded message body.

    Raises:
        MessageError: not a dict, wrong version, unknown or missing fields, wrong types,
            names that cannot be FlowStone names, or an oversized partition.
    """
    if type(body) is not dict:
        raise MessageError(f"a step message must be a JSON object, got {type(body).__name__}")
    extra = set(body) - _FIELDS
    if extra:
        raise MessageError(f"unexpected fields {sorted(map(str, extra))[:5]}")
    version = body.get("v")
    if type(version) is not int or version != MESSAGE_VERSION:
        raise MessageError(f"unsupported message version {version!r} (this worker reads v1)")
    partition = body.get("partition")
    if type(partition) is not str or len(partition) > MAX_PARTITION_LENGTH:
        raise MessageError(f"field 'partition' must be a string of at most "
                           f"{MAX_PARTITION_LENGTH} characters")
    attempt = body.get("attempt")
    if type(attempt) is not int or not 0 <= attempt <= 1_000_000:
        raise MessageError("field 'attempt' must be an integer >= 0")
    return StepMessage(
        run_id=_text(body, "run_id", _RUN_ID),
        pipeline=_text(body, "pipeline", _PIPELINE),
        asset=_text(body, "asset", _ASSET),
        partition=partition,
        attempt=attempt,
    )


def parse_batch(body: object) -> list[object]:
    """The step messages of ``body``: itself, or the items of a batch (a list).

    Raises:
        MessageError: an empty or oversized batch, or a batch inside a batch (each item
            is checked by :func:`parse_message` when it runs, so one bad item does not
            stop the others).
    """
    if type(body) is not list:
        return [body]
    if not 0 < len(body) <= MAX_BATCH:
        raise MessageError(f"a batch holds 1 to {MAX_BATCH} step messages, got {len(body)}")
    if any(type(item) is list for item in body):
        raise MessageError("a batch cannot hold another batch")
    return list(body)
