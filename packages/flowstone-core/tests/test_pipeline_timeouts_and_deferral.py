"""Parallel branch timeouts and coordinator-deferred steps, end to end."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import PipelineFactory

import flowstone as fs
from flowstone.context import new_gate_token
from flowstone.engine import complete_deferred
from flowstone.engine.invoke import bind_arguments
from flowstone.engine.requests import ScatterRequest
from flowstone.scatter import Deferred
from flowstone.testing import ParkedExecutor

release = threading.Event()


@fs.asset
def maps() -> list[str]:
    return ["tile-1", "tile-2"]


@fs.asset
def news() -> list[str]:
    release.wait(5)  # a stuck upstream service
    return ["headline"]


def test_optional_branch_times_out_and_joins_as_branch_failed(
    make_pipeline: PipelineFactory,
) -> None:
    release.clear()

    @fs.asset(
        parallel=fs.Parallel(
            branches={"maps": "maps", "news": "news"},
            mode="partial",
            required=["maps"],
            branch_timeout={"news": 0.3},
        )
    )
    def front_page(branches: dict[str, Any]) -> dict[str, Any]:
        return {k: (v.error if isinstance(v, fs.BranchFailed) else v) for k, v in branches.items()}

    p = make_pipeline([maps, news, front_page])
    started = time.monotonic()
    result = p.run("front_page")
    release.set()
    assert time.monotonic() - started < 4  # the join did not wait for the stuck branch
    assert result.value["maps"] == ["tile-1", "tile-2"]
    assert "branch 'news' of 'front_page' timed out after 0.3s" in result.value["news"]
    assert p.status("news") == "failed"


def test_whole_parallel_timeout_fails_a_required_branch(make_pipeline: PipelineFactory) -> None:
    release.clear()

    @fs.asset(parallel=fs.Parallel(branches={"maps": "maps", "news": "news"}, timeout=0.3))
    def front_page(branches: dict[str, Any]) -> int:
        return len(branches)

    p = make_pipeline([maps, news, front_page])
    result = p.run("front_page")
    release.set()
    assert result.status == "failed"
    assert "timed out after 0.3s" in (result.error or "")
    with pytest.raises(fs.ExecutionError):
        _ = result.value


def test_the_sweeper_enforces_timeouts_without_an_executor(make_pipeline: PipelineFactory) -> None:
    """With a queue-based executor nobody waits in-process: expire_due fails late branches."""

    @fs.asset(parallel=fs.Parallel(branches={"maps": "maps"}, mode="partial", timeout=60))
    def front_page(branches: dict[str, Any]) -> str:
        return repr(branches["maps"])

    parked = ParkedExecutor()  # keeps what it is handed, like a broker
    p = make_pipeline([maps, front_page], executor=parked)
    run = p.run("front_page", wait=False)
    step = parked.sent.pop()
    claimed = p.store.claim_step(
        run.run_id, step.asset, step.partition, owner="w1", lease_seconds=600
    )
    assert claimed is not None
    from flowstone.engine.timeouts import mark_branch_started

    mark_branch_started(p, run.run_id, "maps")
    assert p.expire_due(datetime.now(UTC)) == 0  # not late yet
    assert p.expire_due(datetime.now(UTC) + timedelta(seconds=61)) == 1
    assert [s.asset for s in parked.sent] == ["front_page"]
    assert p.store.get_step(run.run_id, "maps", "").state == "failed"


class ThreadedCoordinator:
    """Defers every scatter and completes it from another thread, like a barrier would."""

    name = "threaded"

    def __init__(self) -> None:
        self.completions: list[tuple[str, bool]] = []
        self.tokens: list[str] = []
        self.done = threading.Event()

    def execute(self, request: ScatterRequest) -> object:
        token = new_gate_token()
        self.tokens.append(token)
        items = list(request.asset.scatter.items(**request.deps))  # type: ignore[union-attr]

        def finish() -> None:
            value = [
                request.asset.fn(
                    **bind_arguments(request.asset, request.deps, request.make_context(item, None))
                )
                for item in items
            ]
            self.completions.append(complete_deferred(request.runner, token, value=value))
            # a redelivered barrier completion is harmless
            self.completions.append(complete_deferred(request.runner, token, value=["dup"]))
            self.done.set()

        return Deferred(token, start=lambda: threading.Thread(target=finish).start())


def test_a_deferred_step_waits_without_a_worker_and_completes_once(
    make_pipeline: PipelineFactory,
) -> None:
    @fs.asset
    def urls() -> list[str]:
        return ["a", "b", "c"]

    @fs.asset(scatter=fs.Scatter(items=lambda urls: [{"u": u} for u in urls]))
    def pages(context: fs.Context, urls: list[str]) -> str:
        return context.scatter_item["u"].upper()

    @fs.asset
    def joined(pages: list[str]) -> str:
        return "".join(pages)

    coordinator = ThreadedCoordinator()
    p = make_pipeline([urls, pages, joined], scatter_coordinator=coordinator)
    first = p.run("joined")
    assert first.status in ("running", "waiting", "succeeded")  # the barrier races us
    assert coordinator.done.wait(5)
    assert p.result(first.run_id).status == "succeeded"
    assert p.get("joined") == "ABC"
    assert [applied for _, applied in coordinator.completions] == [True, False]
    with pytest.raises(fs.SignalError, match="scatter"):
        p.signal(coordinator.tokens[0], {"forged": True})  # not a signal gate


def test_a_store_error_after_the_gather_is_retried_in_place(
    make_pipeline: PipelineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gathered value is in hand when the completion's first read (the gate) hits a
    dead connection: it is retried where it is, so the coordinator does not run the
    gather again (it ran twice in the fault suite when a backend died at that moment)."""

    @fs.asset
    def urls() -> list[str]:
        return ["a", "b"]

    @fs.asset(scatter=fs.Scatter(items=lambda urls: [{"u": u} for u in urls]))
    def pages(context: fs.Context, urls: list[str]) -> str:
        return context.scatter_item["u"].upper()

    coordinator = ThreadedCoordinator()
    p = make_pipeline([urls, pages], scatter_coordinator=coordinator)
    real, failed = p.store.get_gate, []

    def once(token_hash: str) -> Any:
        if not failed and threading.current_thread() is not threading.main_thread():
            failed.append(token_hash)
            raise fs.StorageError("connection was closed in the middle of operation")
        return real(token_hash)

    monkeypatch.setattr(p.store, "get_gate", once)
    run = p.run("pages")
    assert coordinator.done.wait(10)
    assert failed and p.result(run.run_id).status == "succeeded"
    assert [applied for _, applied in coordinator.completions] == [True, False]
    assert p.get("pages") == ["A", "B"]
