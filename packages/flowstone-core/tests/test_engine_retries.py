"""Retries, timeouts and cancellation as a user sees them."""

from __future__ import annotations

import threading
from typing import Any

from conftest import Counter, PipelineFactory, Recorder

import flowstone as fs

FAST = dict(base_delay=0, jitter=0)


def test_retry_policy_retries_until_success(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    attempts: list[int] = []

    @fs.asset(retry=fs.RetryPolicy(max_attempts=3, **FAST))  # type: ignore[arg-type]
    def exchange_rates(context: fs.Context) -> dict[str, float]:
        attempts.append(context.attempt)
        if len(attempts) < 3:
            raise ConnectionError("rates API timeout")
        return {"EUR": 1.1}

    p = make_pipeline([exchange_rates])
    result = p.run("exchange_rates")
    assert result.status == "succeeded" and result.value == {"EUR": 1.1}
    assert attempts == [1, 2, 3]
    assert result.materializations[0].attempt == 3


def test_retry_policy_gives_up_after_max_attempts(make_pipeline: PipelineFactory) -> None:
    attempts: list[int] = []

    @fs.asset(retry=fs.RetryPolicy(max_attempts=2, **FAST))  # type: ignore[arg-type]
    def exchange_rates(context: fs.Context) -> None:
        attempts.append(context.attempt)
        raise ConnectionError("rates API down")

    p = make_pipeline([exchange_rates])
    result = p.run("exchange_rates")
    assert result.status == "failed" and attempts == [1, 2]
    assert "rates API down" in (result.error or "")


def test_retry_on_filters_exception_types(make_pipeline: PipelineFactory, counter: Counter) -> None:
    @fs.asset(retry=fs.RetryPolicy(max_attempts=5, retry_on=(ConnectionError,), **FAST))  # type: ignore[arg-type]
    def parse_feed() -> None:
        counter.hit("parse_feed")
        raise ValueError("malformed feed")

    p = make_pipeline([parse_feed])
    assert p.run("parse_feed").status == "failed"
    assert counter.calls == {"parse_feed": 1}


def test_retry_outcome_is_not_counted_as_error(
    make_pipeline: PipelineFactory, recorder: Recorder
) -> None:
    attempts: list[int] = []

    @fs.asset  # no retry policy: one error would fail it, a Retry does not
    def export_ready(context: fs.Context) -> Any:
        attempts.append(context.attempt)
        if len(attempts) < 3:
            return fs.Retry(after=0.01, reason="export not ready yet")
        return "exported"

    p = make_pipeline([export_ready], observers=[recorder])
    result = p.run("export_ready")
    assert result.status == "succeeded" and result.value == "exported"
    assert len(attempts) == 3
    assert recorder.kinds().count("asset.retrying") == 2
    assert "asset.failed" not in recorder.kinds()


def test_asset_timeout_fails_with_clear_message(make_pipeline: PipelineFactory) -> None:
    release = threading.Event()

    @fs.asset(timeout=0.05)
    def slow_report() -> str:
        release.wait(5)
        return "late"

    p = make_pipeline([slow_report])
    try:
        result = p.run("slow_report")
    finally:
        release.set()
    assert result.status == "failed"
    error = result.error or ""
    assert "AssetTimeoutError" in error and "asset 'slow_report'" in error
    assert "timeout of 0.05s" in error


def test_cancel_from_another_thread_stops_new_steps(
    make_pipeline: PipelineFactory, counter: Counter
) -> None:
    started = threading.Event()
    release = threading.Event()

    @fs.asset
    def extract() -> list[int]:
        started.set()
        release.wait(5)
        return [1, 2, 3]

    @fs.asset
    def load(extract: list[int]) -> int:
        counter.hit("load")
        return len(extract)

    p = make_pipeline([extract, load])

    def operator() -> None:
        started.wait(5)
        p.cancel("nightly-1")
        release.set()

    t = threading.Thread(target=operator)
    t.start()
    result = p.run("load", run_id="nightly-1")
    t.join()
    assert result.status == "cancelled"
    assert "load" not in counter.calls
    assert not p.exists("load") and not p.exists("extract")  # finished, not recorded


def test_run_timeout_cancels_and_says_why(make_pipeline: PipelineFactory, counter: Counter) -> None:
    release = threading.Event()

    @fs.asset
    def crawl() -> str:
        counter.enter()
        try:
            release.wait(10)  # a runaway asset
            return "done"
        finally:
            counter.leave()

    @fs.asset
    def summary(crawl: str) -> str:
        counter.hit("summary")
        return crawl

    p = make_pipeline([crawl, summary])
    try:
        result = p.run("summary", timeout=0.1)
        returned_while_running = counter.active == 1
    finally:
        release.set()
    for _ in range(500):  # let the abandoned asset finish before the store closes
        if counter.active == 0:
            break
        threading.Event().wait(0.01)
    assert returned_while_running  # run(timeout=) does not wait for the runaway asset
    assert result.status == "cancelled"
    assert result.error == "timed out after 0.1s"
    assert "summary" not in counter.calls and not p.exists("crawl")
