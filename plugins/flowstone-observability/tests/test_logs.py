"""FLOWSTONE_LOG_FORMAT=json: every FlowStone and context.log line carries the step fields."""

from __future__ import annotations

import io
import json
import logging

import pytest
from helpers import etl

from flowstone_observability.logs import (
    FIELDS,
    StepLogContext,
    configure_logging,
    json_logs_requested,
)


def test_context_log_and_engine_lines_carry_the_step_fields() -> None:
    stream = io.StringIO()
    handler = configure_logging(logging.StreamHandler(stream))
    root = logging.getLogger("flowstone")
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    try:
        pipeline = etl([StepLogContext()])
        pipeline.run("doubled")
        pipeline.run("broken")
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines, "no log line was written"
    for line in lines:
        assert set(FIELDS) <= set(line), line
        assert {"ts", "level", "logger", "message"} <= set(line)
    doubling = [line for line in lines if line["message"] == "doubling 3 numbers"]
    assert len(doubling) == 1
    assert doubling[0]["pipeline"] == "etl" and doubling[0]["asset"] == "doubled"
    assert doubling[0]["attempt"] == 1 and doubling[0]["partition"] == ""
    assert doubling[0]["run_id"]
    failure = [line for line in lines if "broken on purpose" in line["message"]]
    assert failure, lines
    assert failure[0]["asset"] == "broken" and failure[0]["pipeline"] == "etl"


def test_the_variable_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert json_logs_requested() is False
    monkeypatch.setenv("FLOWSTONE_LOG_FORMAT", "JSON")
    assert json_logs_requested() is True
    monkeypatch.setenv("FLOWSTONE_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError, match="'json' or 'text'"):
        json_logs_requested()
