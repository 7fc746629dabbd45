from __future__ import annotations

import json
from typing import Any

import pytest

from flowstone_celery import MessageError, StepMessage, parse_message


def good() -> dict[str, Any]:
    return StepMessage("r1", "etl", "clean", "2024-01-01", 2).to_json()


def test_message_is_json_primitives_and_round_trips() -> None:
    body = good()
    assert json.loads(json.dumps(body)) == body
    assert body == {"v": 1, "run_id": "r1", "pipeline": "etl", "asset": "clean",
                    "partition": "2024-01-01", "attempt": 2}
    assert parse_message(body) == StepMessage("r1", "etl", "clean", "2024-01-01", 2)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"v": 2}, "version"),
        ({"v": True}, "version"),
        ({"run_id": "../etc"}, "run_id"),
        ({"run_id": 5}, "run_id"),
        ({"pipeline": "os.system('x')"}, "pipeline"),
        ({"asset": "__import__('os')"}, "asset"),
        ({"asset": None}, "asset"),
        ({"partition": ["a"]}, "partition"),
        ({"partition": "x" * 5000}, "partition"),
        ({"attempt": "1"}, "attempt"),
        ({"attempt": -1}, "attempt"),
        ({"attempt": False}, "attempt"),
        ({"code": "print(1)"}, "unexpected"),
    ],
)
def test_invalid_messages_are_rejected(change: dict[str, Any], why: str) -> None:
    body = {**good(), **change}
    with pytest.raises(MessageError, match=why):
        parse_message(body)


@pytest.mark.parametrize("body", [None, "text", ["r1", "etl"], 42])
def test_non_objects_are_rejected(body: object) -> None:
    with pytest.raises(MessageError, match="JSON object"):
        parse_message(body)


def test_missing_fields_are_rejected() -> None:
    body = good()
    del body["asset"]
    with pytest.raises(MessageError, match="asset"):
        parse_message(body)
