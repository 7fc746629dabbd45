from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import drain, quickstart

from flowstone.errors import StorageError, UsageError
from flowstone.records import StepRecord
from flowstone_celery import CeleryExecutor, CelerySettings, FlowstoneCelery, Sweeper, make_app
from flowstone_celery.tasks import handle_step


def step(asset: str, partition: str = "", **kw: object) -> StepRecord:
    return StepRecord("run1", asset, partition, "ready", 0, **kw)  # type: ignore[arg-type]


def test_app_accepts_json_only_and_acks_late(app: FlowstoneCelery) -> None:
    conf = app.conf
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == conf.event_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.task_ignore_result
    assert conf.broker_transport_options["visibility_timeout"] == 3600
    assert {"flowstone.run_step", "flowstone.sweep"} <= set(app.tasks)


def test_dispatch_publishes_one_json_message_per_step(app: FlowstoneCelery) -> None:
    pipeline = quickstart()
    app.executor.dispatch(pipeline, "run1", [step("numbers"), step("doubled", "2024-01-01")])
    published = drain(app)
    assert [body for body, _, _ in published] == [
        {"v": 1, "run_id": "run1", "pipeline": "quickstart", "asset": "numbers",
         "partition": "", "attempt": 0},
        {"v": 1, "run_id": "run1", "pipeline": "quickstart", "asset": "doubled",
         "partition": "2024-01-01", "attempt": 0},
    ]
    assert {ctype for _, _, ctype in published} == {"application/json"}
    assert {headers["task"] for _, headers, _ in published} == {"flowstone.run_step"}
    pipeline.close()


def test_messages_are_celery_task_messages_and_publish_signals_fire(
    app: FlowstoneCelery,
) -> None:
    """Tracing and monitoring hook into Celery's publish signals (OpenTelemetry injects its
    context in ``before_task_publish``): our publish path must fire them like send_task."""
    from celery.signals import after_task_publish, before_task_publish

    seen: list[tuple[str, str, str]] = []

    def before(sender: str, headers: dict[str, Any], **_: object) -> None:
        headers["traceparent"] = "00-trace-span-01"  # what a tracer adds
        seen.append(("before", sender, headers["id"]))

    def after(sender: str, headers: dict[str, Any], **_: object) -> None:
        seen.append(("after", sender, headers["id"]))

    before_task_publish.connect(before, weak=False)
    after_task_publish.connect(after, weak=False)
    pipeline = quickstart()
    try:
        app.executor.dispatch(pipeline, "run1", [step("numbers"), step("doubled")])
    finally:
        before_task_publish.disconnect(before)
        after_task_publish.disconnect(after)
        pipeline.close()
    published = drain(app)
    ids = [headers["id"] for _, headers, _ in published]
    assert len(set(ids)) == 2 and all(len(i) == 36 for i in ids)  # a fresh task id each
    assert seen == [("before", "flowstone.run_step", ids[0]), ("after", "flowstone.run_step",
                    ids[0]), ("before", "flowstone.run_step", ids[1]),
                    ("after", "flowstone.run_step", ids[1])]
    for body, headers, _ in published:
        assert headers["task"] == "flowstone.run_step" and headers["ignore_result"] is True
        assert headers["traceparent"] == "00-trace-span-01"
        assert headers["argsrepr"] == f"({body!r},)" and headers["eta"] is None
        # published by a client, not from inside a task: each message starts a task tree
        assert headers["root_id"] == headers["id"] and headers["parent_id"] is None


def test_retries_get_a_countdown_and_long_ones_are_left_to_the_sweeper(
    app: FlowstoneCelery,
) -> None:
    now = datetime.now(UTC)
    executor = app.executor
    batch = executor.messages("p", "run1", [
        step("a"),
        step("b", not_before=now + timedelta(seconds=30)),
        step("c", not_before=now - timedelta(seconds=5)),
        step("d", not_before=now + timedelta(hours=2)),
    ], now=now)
    assert [(body["asset"], countdown) for body, countdown in batch] == [
        ("a", None), ("b", 30.0), ("c", None)]
    pipeline = quickstart()
    executor.dispatch(pipeline, "run1", [step("b", not_before=datetime.now(UTC) + timedelta(
        seconds=30))])
    pipeline.close()
    (_, headers, _), = drain(app)
    eta = datetime.fromisoformat(headers["eta"])
    assert timedelta(seconds=25) < eta - datetime.now(UTC) <= timedelta(seconds=30)


@pytest.mark.parametrize(("inline", "messages"), [(0, 4), (16, 2)])
def test_worker_loop_runs_a_whole_run_through_the_broker(
    settings: CelerySettings, inline: int, messages: int
) -> None:
    # numbers -> (doubled, tripled) -> total. Inline: numbers' worker goes on with doubled
    # and publishes tripled; tripled's worker goes on with total (the join).
    app = make_app(settings.model_copy(update={"inline_steps": inline}))
    pipeline = quickstart()
    app.add_pipeline(pipeline)
    assert pipeline.executor is app.executor and not pipeline.executor.blocking
    result = pipeline.run("total", wait=False)
    handled = 0
    while batch := drain(app):
        for body, _, _ in batch:
            handle_step(app, body)
            handled += 1
    assert handled == messages
    final = pipeline.result(result.run_id)
    assert final.status == "succeeded"
    assert final.value == 12 + 18
    assert {s.asset: s.attempt for s in pipeline.store.list_steps(result.run_id)} == {
        "numbers": 1, "doubled": 1, "tripled": 1, "total": 1}
    app.close_pipelines()
    app.close()


def test_many_runs_share_messages_but_never_one_runs_steps(settings: CelerySettings) -> None:
    """dispatch_many: up to FLOWSTONE_BATCH_STEPS steps per message, each of another run;
    the worker runs every step of a batch, and the runs all finish."""
    app = make_app(settings.model_copy(update={"batch_steps": 4}))
    pipeline = quickstart()
    app.add_pipeline(pipeline)
    results = pipeline.run_many("total", [None] * 10, force=True, wait=False)
    assert [r.status for r in results] == ["running"] * 10
    first = drain(app)
    # one ready step (numbers) per run: 10 steps in messages of at most 4
    assert [len(body) if isinstance(body, list) else 1 for body, _, _ in first] == [4, 4, 2]
    for body, _, _ in first:
        steps = body if isinstance(body, list) else [body]
        assert len({s["run_id"] for s in steps}) == len(steps)  # never two of one run
    batch = first
    while batch:
        for body, _, _ in batch:
            handle_step(app, body)
        batch = drain(app)
    final = pipeline.wait(results)
    assert [r.status for r in final] == ["succeeded"] * 10 and final[0].value == 30
    app.close_pipelines()
    app.close()


def test_a_retried_batch_skips_the_steps_it_already_ran(
    settings: CelerySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails on the second step of a batch: the task is retried with the whole
    batch, the first step (already finished) is a duplicate and does not run again."""
    app = make_app(settings.model_copy(update={"batch_steps": 8, "inline_steps": 0}))
    pipeline = quickstart()
    app.add_pipeline(pipeline)
    runs = pipeline.run_many("numbers", [None] * 3, force=True, wait=False)
    (body, _, _), = drain(app)
    assert isinstance(body, list) and len(body) == 3
    from flowstone.engine.runner import StepRunner

    real = StepRunner.run_step
    failures = iter([StorageError("database restarting")])

    def flaky(self: StepRunner, run_id: str, *args: Any, **kwargs: Any) -> Any:
        if run_id == runs[1].run_id and (exc := next(failures, None)) is not None:
            raise exc
        return real(self, run_id, *args, **kwargs)

    monkeypatch.setattr(StepRunner, "run_step", flaky)
    with pytest.raises(StorageError):
        handle_step(app, body)
    assert [pipeline.result(r.run_id).status for r in runs] == [
        "succeeded", "running", "running"]
    handle_step(app, body)  # Celery's retry delivers the same batch again
    steps = [pipeline.store.get_step(r.run_id, "numbers", "") for r in runs]
    assert [(s.state, s.attempt) for s in steps if s] == [("succeeded", 1)] * 3
    app.close_pipelines()
    app.close()


def test_a_run_with_several_ready_steps_spreads_them_over_messages(
    settings: CelerySettings,
) -> None:
    app = make_app(settings.model_copy(update={"batch_steps": 8}))
    runs = [(f"run{i}", [StepRecord(f"run{i}", a, "", "ready", 0) for a in "abc"])
            for i in range(5)]
    pipeline = quickstart()
    app.executor.dispatch_many(pipeline, runs)
    pipeline.close()
    published = [body for body, _, _ in drain(app)]
    assert len(published) == 3  # one message per lane: a's, b's, c's
    for body in published:
        assert len({s["asset"] for s in body}) == 1 and len({s["run_id"] for s in body}) == 5
    app.close()


def test_batching_can_be_turned_off_and_delayed_steps_go_alone(
    settings: CelerySettings,
) -> None:
    app = make_app(settings.model_copy(update={"batch_steps": 1}))
    later = datetime.now(UTC) + timedelta(seconds=30)
    runs = [(f"run{i}", [StepRecord(f"run{i}", "a", "", "ready", 0)]) for i in range(3)]
    runs.append(("run9", [StepRecord("run9", "a", "", "ready", 0, not_before=later)]))
    pipeline = quickstart()
    app.executor.dispatch_many(pipeline, runs)
    pipeline.close()
    published = drain(app)
    assert sorted(body["run_id"] for body, _, _ in published) == ["run0", "run1", "run2",
                                                                  "run9"]  # one step each
    (delayed,) = [headers for body, headers, _ in published if body["run_id"] == "run9"]
    assert delayed["eta"] is not None  # sent with its countdown, not in a batch
    app.close()


def test_bad_batches_are_dropped_and_good_items_still_run(
    app: FlowstoneCelery, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline = quickstart()
    app.add_pipeline(pipeline)
    with caplog.at_level(logging.ERROR, logger="flowstone.celery"):
        assert handle_step(app, []) == 0
        assert handle_step(app, [[{"v": 1}]]) == 0
        assert handle_step(app, [{"v": 1}] * 65) == 0
    assert sum("a batch" in r.getMessage() for r in caplog.records) == 3
    run = pipeline.run("numbers", wait=False)
    (good, _, _), = drain(app)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="flowstone.celery"):
        handle_step(app, [{"v": 1, "evil": "__import__('os')"}, good])
    assert any("unexpected fields" in r.getMessage() for r in caplog.records)
    assert pipeline.result(run.run_id).status == "succeeded"
    pipeline.close()


def test_a_continuation_that_cannot_run_is_published_not_lost(
    app: FlowstoneCelery, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = quickstart()
    app.add_pipeline(pipeline)
    run = pipeline.run("doubled", wait=False)
    (body, _, _), = drain(app)
    store = pipeline.store
    real = store.finish_step
    real_reading = store.finish_step_reading  # the same finish, through ContinuationReads

    def flaky(run_id: str, asset: str, partition: str, outcome: object, **kw: object) -> object:
        if asset == "doubled":  # the continuation ran, but its result cannot be recorded
            raise StorageError("store unreachable")
        return real(run_id, asset, partition, outcome, **kw)  # type: ignore[arg-type]

    def flaky_reading(
        run_id: str, asset: str, partition: str, outcome: object, **kw: object
    ) -> object:
        if asset == "doubled":
            raise StorageError("store unreachable")
        return real_reading(run_id, asset, partition, outcome, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "finish_step", flaky)
    monkeypatch.setattr(store, "finish_step_reading", flaky_reading)
    # numbers ran and claimed doubled, whose finish failed: an infrastructure error, not
    # the asset's failure: its claim is released and it is published again (no lease wait)
    handle_step(app, body)
    step = store.get_step(run.run_id, "doubled", "")
    assert step is not None and step.state == "ready" and step.attempt == 1
    assert "infrastructure error" in (step.error or "")
    assert "store unreachable" in (step.error or "")
    monkeypatch.setattr(store, "finish_step", real)
    monkeypatch.setattr(store, "finish_step_reading", real_reading)
    (again, _, _), = drain(app)  # handed back to the broker, not left to the lease
    assert again["asset"] == "doubled"
    handle_step(app, again)
    assert pipeline.get("doubled") == [2, 4, 6]
    assert pipeline.result(run.run_id).status == "succeeded"


def test_the_continuation_is_claimed_by_the_finish_not_by_a_second_call(
    app: FlowstoneCelery, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = quickstart()
    app.add_pipeline(pipeline)
    run = pipeline.run("doubled", wait=False)
    (body, _, _), = drain(app)
    claims: list[str] = []
    real = pipeline.store.claim_step

    def counting(run_id: str, asset: str, partition: str, **kw: object) -> StepRecord | None:
        claims.append(asset)
        return real(run_id, asset, partition, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline.store, "claim_step", counting)
    handle_step(app, body)
    assert claims == ["numbers"] and drain(app) == []
    assert pipeline.result(run.run_id).status == "succeeded"


def test_a_continuation_reads_its_inputs_from_the_finish_that_claimed_it(
    settings: CelerySettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two workers (two apps, two pipelines, one store): the second finishes tripled and
    # goes on with total, whose other input (doubled) only the first worker has seen
    first, second = make_app(settings), make_app(settings)
    one = quickstart()
    two = quickstart(like=one)
    first.add_pipeline(one)
    second.add_pipeline(two)
    run = one.run("total", wait=False)
    (numbers, _, _), = drain(first)
    handle_step(first, numbers)  # numbers, then doubled inline; tripled is published
    (tripled, _, _), = drain(first)
    reads: list[object] = []
    real = one.store.get_step_results

    def counting(run_id: str, keys: object) -> object:
        reads.append(keys)
        return real(run_id, keys)  # type: ignore[arg-type]

    monkeypatch.setattr(one.store, "get_step_results", counting)
    handle_step(second, tripled)  # tripled reads numbers; total comes with its inputs
    assert reads == [[("numbers", "")]]
    assert two.result(run.run_id).status == "succeeded" and two.get("total") == 12 + 18
    for app in (first, second):
        app.close_pipelines()
        app.close()


def test_a_chain_goes_back_to_the_broker_after_inline_steps(settings: CelerySettings) -> None:
    import flowstone as fs

    @fs.asset
    def a() -> int:
        return 1

    @fs.asset
    def b(a: int) -> int:
        return a + 1

    @fs.asset
    def c(b: int) -> int:
        return b + 1

    @fs.asset
    def d(c: int) -> int:
        return c + 1

    app = make_app(settings.model_copy(update={"inline_steps": 2}))
    pipeline = fs.Pipeline("chain", [a, b, c, d], store="memory://", executor="inprocess")
    app.add_pipeline(pipeline)
    run = pipeline.run("d", wait=False)
    (first, _, _), = drain(app)
    assert handle_step(app, first) == 1  # a, then b and c inline; d is published
    (rest, _, _), = drain(app)
    assert rest["asset"] == "d"
    handle_step(app, rest)
    assert pipeline.result(run.run_id).status == "succeeded" and pipeline.get("d") == 4
    app.close_pipelines()
    app.close()


def test_the_queue_is_declared_with_the_first_message_only(
    app: FlowstoneCelery, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = quickstart()
    declared: list[object] = []
    real = app.amqp.send_task_message

    def recording(*args: object, **kwargs: object) -> object:
        declared.append(kwargs.get("declare"))
        return real(*args, **kwargs)

    monkeypatch.setattr(app.amqp, "send_task_message", recording)
    app.executor.dispatch(pipeline, "run1", [step("numbers"), step("doubled")])
    app.executor.dispatch(pipeline, "run1", [step("tripled")])
    assert declared == [None, [], []]  # None: Celery declares the queue as usual
    assert [body["asset"] for body, _, _ in drain(app)] == ["numbers", "doubled", "tripled"]
    pipeline.close()


def test_redelivered_message_changes_nothing(app: FlowstoneCelery) -> None:
    pipeline = quickstart()
    app.add_pipeline(pipeline)
    run = pipeline.run("numbers", wait=False)
    (body, _, _), = drain(app)
    assert handle_step(app, body) == 0  # numbers alone: nothing downstream in the plan
    assert handle_step(app, body) == 0
    mats = pipeline.store.list_materializations("quickstart", asset="numbers",
                                                run_id=run.run_id)
    assert len(mats) == 1


@pytest.mark.parametrize(
    ("body", "logged"),
    [
        ({"v": 1, "run_id": "r", "pipeline": "nope", "asset": "numbers", "partition": "",
          "attempt": 0}, "unknown pipeline 'nope'"),
        ({"v": 1, "run_id": "r", "pipeline": "quickstart", "asset": "nope", "partition": "",
          "attempt": 0}, "unknown asset 'nope'"),
        ({"v": 1, "run_id": "r", "pipeline": "quickstart", "asset": "numbers"},
         "malformed"),
        ("__import__('os').system('true')", "malformed"),
    ],
)
def test_unknown_or_malformed_messages_are_logged_and_dropped(
    app: FlowstoneCelery, caplog: pytest.LogCaptureFixture, body: object, logged: str
) -> None:
    app.add_pipeline(quickstart())
    with caplog.at_level(logging.ERROR, logger="flowstone.celery"):
        assert handle_step(app, body) == 0
    assert logged in caplog.text
    assert drain(app) == []


def test_a_message_naming_another_pipelines_run_is_rejected(
    app: FlowstoneCelery, caplog: pytest.LogCaptureFixture
) -> None:
    """One store, two pipelines with the same asset names: a message
    {"pipeline": "billing", "run_id": <a reports run>, ...} must not run billing's asset
    inside the reports run (the claim checks the run's pipeline)."""
    reports = quickstart("reports")
    billing = quickstart("billing", like=reports)
    app.add_pipeline(reports)
    app.add_pipeline(billing)
    run = reports.run("numbers", wait=False)
    (body, _, _), = drain(app)
    forged = {**body, "pipeline": "billing"}
    with caplog.at_level(logging.WARNING, logger="flowstone.engine"):
        assert handle_step(app, forged) == 0
    assert "rejected a message" in caplog.text and "belongs to pipeline 'reports'" in caplog.text
    step = reports.store.get_step(run.run_id, "numbers", "")
    assert step is not None and (step.state, step.attempt) == ("ready", 0)
    assert reports.store.list_materializations("reports", run_id=run.run_id) == []
    assert drain(app) == []
    assert handle_step(app, body) == 0  # the genuine message runs it
    assert len(reports.store.list_materializations("reports", run_id=run.run_id)) == 1


def test_two_pipelines_with_one_name_are_refused(app: FlowstoneCelery) -> None:
    app.add_pipeline(quickstart())
    other = quickstart()
    with pytest.raises(UsageError, match="unique names"):
        app.add_pipeline(other)
    other.close()


def test_a_worker_needs_a_pipeline(app: FlowstoneCelery) -> None:
    with pytest.raises(UsageError, match="--pipeline"):
        app.load_pipelines([])


def test_only_one_sweeper_wins_each_interval(app: FlowstoneCelery) -> None:
    app.add_pipeline(quickstart())
    now = datetime.now(UTC)
    first, second = Sweeper(app).sweep(now), Sweeper(app).sweep(now)
    assert first.swept == ("quickstart",)
    assert second.swept == ()
    later = Sweeper(app).sweep(now + timedelta(seconds=app.flowstone_settings.sweep_interval))
    assert later.swept == ("quickstart",)


def test_a_sweep_prunes_earlier_intervals_claims(app: FlowstoneCelery) -> None:
    """The sweeper claims one tick per interval; without pruning that table grows by
    8,640 rows a day per pipeline at a 10 s interval (issue 11: ticks were never pruned)."""
    pipeline = quickstart()
    app.add_pipeline(pipeline)
    interval = app.flowstone_settings.sweep_interval
    now = datetime.now(UTC)
    assert Sweeper(app).sweep(now).swept == ("quickstart",)
    old_bucket = str(int(now.timestamp() // interval))
    later = now + timedelta(hours=2)
    pipeline.store.clock = lambda: later  # type: ignore[attr-defined]
    assert Sweeper(app).sweep(later).swept == ("quickstart",)
    # the earlier interval's claim is gone (claimable again), the current one is kept
    assert pipeline.store.claim_tick("celery-sweep:quickstart", old_bucket)
    assert not pipeline.store.claim_tick(
        "celery-sweep:quickstart", str(int(later.timestamp() // interval))
    )


def test_sweeper_redispatches_a_step_whose_message_was_lost(app: FlowstoneCelery) -> None:
    pipeline = quickstart()
    app.add_pipeline(pipeline)
    run = pipeline.run("numbers", wait=False)
    drain(app)  # the message is lost
    # five minutes later by the store's clock (it decides what is due, not the sweeper's)
    later = datetime.now(UTC) + timedelta(minutes=5)
    pipeline.store.clock = lambda: later  # type: ignore[attr-defined]
    report = Sweeper(app).sweep(later)
    assert report.recovered == 1
    (body, _, _), = drain(app)
    assert body["run_id"] == run.run_id and body["asset"] == "numbers"


def test_executor_from_entry_point_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWSTONE_QUEUE", "from-env")
    from flowstone.registry import PluginRegistry

    executor = PluginRegistry().create("flowstone.executors", "celery")
    assert isinstance(executor, CeleryExecutor)
    assert executor.settings.queue == "from-env"
    assert executor.blocking is False
    executor.close()


def test_health_reports_no_workers_on_an_idle_broker(app: FlowstoneCelery) -> None:
    report = app.executor.health()
    assert report["broker"] == "ok"
    assert report["ok"] is False


def test_seed_no_unbounded_interning_of_names_from_messages(app: FlowstoneCelery) -> None:
    """Names arriving in messages are untrusted: thousands of distinct unknown pipeline and
    asset names must not leave anything behind (no loggers, no registry entries, no
    pipelines), unlike the Elixir original, which made an atom per name."""
    app.add_pipeline(quickstart())
    loggers_before = set(logging.Logger.manager.loggerDict)
    pipelines_before = dict(app.pipelines)
    for i in range(3000):
        body = {"v": 1, "run_id": f"run{i}", "pipeline": f"evil_{i}", "asset": "numbers",
                "partition": "", "attempt": 0}
        assert handle_step(app, body) == 0
        body = {"v": 1, "run_id": f"run{i}", "pipeline": "quickstart", "asset": f"evil_{i}",
                "partition": "", "attempt": 0}
        assert handle_step(app, body) == 0
    assert set(logging.Logger.manager.loggerDict) == loggers_before
    assert dict(app.pipelines) == pipelines_before
    assert drain(app) == []
