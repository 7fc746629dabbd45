"""The daemon loop against fake pipelines and the real memory and SQLite run stores."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import flowstone as fs
from flowstone.daemon import Daemon, install_signal_handlers
from flowstone.defaults.memory_store import MemoryRunStore
from flowstone.defaults.sqlite_store import SQLiteRunStore
from flowstone.errors import DefinitionError, StorageError, UsageError
from flowstone.records import RunRecord, StepSpec
from flowstone.schedules import Schedule, previous_day, previous_hour
from flowstone.sensors import RunRequest, Sensor, SensorContext, SensorResult

T0 = datetime(2024, 1, 1, 0, 0, 30, tzinfo=UTC)


@dataclass
class FakePipeline:
    """Implements the daemon's PipelineLike protocol and records every call."""

    name: str
    store: Any
    schedules: tuple[Schedule, ...] = ()
    sensors: tuple[Sensor, ...] = ()
    failing: set[str] = field(default_factory=set)
    raising: set[str] = field(default_factory=set)
    calls: list[tuple[Any, Any, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    expire_calls: list[datetime] = field(default_factory=list)
    expire_error: Exception | None = None
    store_down: int = 0  # this many run starts fail on the store before the run exists

    def run(
        self, targets: str | Sequence[str], *, partition: Any = None, tags: Any = None,
        force: bool = False, run_id: str | None = None,
    ) -> Any:
        if self.store_down > 0:
            self.store_down -= 1
            raise StorageError("could not connect to the database (connection refused)")
        if targets in self.raising:
            with self.lock:
                self.calls.append((targets, partition, dict(tags or {})))
            raise RuntimeError(f"cannot start {targets}")
        status = "failed" if targets in self.failing else "succeeded"
        if run_id is not None:  # like a real pipeline: the store creates each run id once
            now = datetime.now(UTC)
            self.store.create_run(
                RunRecord(run_id, self.name, (str(targets),), "", status, now, now),
                [StepSpec(str(targets) if isinstance(targets, str) else "t", "")],
            )  # raises StorageError for a run id that exists
        with self.lock:
            self.calls.append((targets, partition, dict(tags or {})))
            run_id = run_id or f"run-{len(self.calls)}"
        return SimpleNamespace(run_id=f"run-{len(self.calls)}", status=status)

    def expire_due(self, now: datetime) -> int:
        self.expire_calls.append(now)
        if self.expire_error is not None:
            raise self.expire_error
        return 1

    def prune(self, now: datetime) -> int:
        return 2

    def recover(self, now: datetime) -> int:
        return 3


def hourly(**kwargs: Any) -> Schedule:
    return Schedule("hourly", "0 * * * *", "report", **kwargs)


def at(hours: float = 0, minutes: float = 0, seconds: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, minutes=minutes, seconds=seconds)


class TestSchedules:
    def test_first_sight_starts_from_now_without_backfill(self) -> None:
        pipeline = FakePipeline("p", MemoryRunStore(), schedules=(hourly(catch_up="all"),))
        report = Daemon([pipeline]).tick(at())
        assert report.fired == () and pipeline.calls == []
        # The first tick after first sight fires.
        report = Daemon([pipeline]).tick(at(hours=1))
        assert [f.key for f in report.fired] == ["2024-01-01T01:00:00+00:00"]

    def test_fires_each_tick_once_with_partition_and_tags(self) -> None:
        schedule = hourly(partition=previous_hour, tags={"team": "data"})
        pipeline = FakePipeline("p", MemoryRunStore(), schedules=(schedule,))
        daemon = Daemon([pipeline])
        daemon.tick(at())
        report = daemon.tick(at(hours=1))
        assert pipeline.calls == [
            (
                "report",
                datetime(2024, 1, 1, 0, tzinfo=UTC),
                {"team": "data", "schedule": "hourly", "tick": "2024-01-01T01:00:00+00:00"},
            )
        ]
        fired = report.fired[0]
        assert (fired.pipeline, fired.source, fired.name, fired.run_id, fired.status) == (
            "p",
            "schedule",
            "hourly",
            "run-1",
            "succeeded",
        )
        # Ticking again at the same or a later time inside the hour fires nothing new.
        assert daemon.tick(at(hours=1)).fired == ()
        assert daemon.tick(at(hours=1, minutes=30)).fired == ()
        assert len(pipeline.calls) == 1

    def test_multi_asset_target_is_passed_as_a_sequence(self) -> None:
        schedule = Schedule("both", "@hourly", ["a", "b"])
        pipeline = FakePipeline("p", MemoryRunStore(), schedules=(schedule,))
        daemon = Daemon([pipeline])
        daemon.tick(at())
        daemon.tick(at(hours=1))
        assert pipeline.calls[0][0] == ("a", "b")

    @pytest.mark.parametrize(
        ("policy", "expected_hours", "dropped"),
        [("latest", [5], "4 tick(s)"), ("all", [1, 2, 3, 4, 5], None), ("none", [], "5 tick(s)")],
    )
    def test_catch_up_after_downtime(
        self, policy: str, expected_hours: list[int], dropped: str | None
    ) -> None:
        pipeline = FakePipeline("p", MemoryRunStore(), schedules=(hourly(catch_up=policy),))
        daemon = Daemon([pipeline])
        daemon.tick(at())
        report = daemon.tick(at(hours=5, minutes=30))  # the daemon was down 5.5 hours
        assert [f.key[11:13] for f in report.fired] == [f"{h:02d}" for h in expected_hours]
        skipped = [s.key for s in report.skipped]
        assert skipped == ([] if dropped is None else [skipped[0]])
        if dropped:
            assert skipped[0].startswith(dropped)

    def test_daily_schedule_in_a_timezone_across_spring_forward(self) -> None:
        schedule = Schedule(
            "nightly",
            "30 2 * * *",
            "report",
            timezone="America/New_York",
            partition=previous_day,
            catch_up="all",
        )
        pipeline = FakePipeline("p", MemoryRunStore(), schedules=(schedule,))
        daemon = Daemon([pipeline])
        new_york = ZoneInfo("America/New_York")
        daemon.tick(datetime(2024, 3, 9, 12, tzinfo=new_york))
        for hours in range(1, 73):  # tick hourly for three days
            daemon.tick(datetime(2024, 3, 9, 12, tzinfo=new_york) + timedelta(hours=hours))
        assert [(c[1], c[2]["tick"]) for c in pipeline.calls] == [
            (date(2024, 3, 9), "2024-03-10T07:00:00+00:00"),  # 02:30 did not exist: 03:00 EDT
            (date(2024, 3, 10), "2024-03-11T06:30:00+00:00"),
            (date(2024, 3, 11), "2024-03-12T06:30:00+00:00"),
        ]

    def test_failing_and_raising_runs_are_reported_and_the_daemon_goes_on(self) -> None:
        schedules = (
            Schedule("bad", "@hourly", "explodes"),
            Schedule("sad", "@hourly", "fails"),
            Schedule("good", "@hourly", "works"),
        )
        pipeline = FakePipeline(
            "p", MemoryRunStore(), schedules=schedules, failing={"fails"}, raising={"explodes"}
        )
        daemon = Daemon([pipeline])
        daemon.tick(at())
        report = daemon.tick(at(hours=1))
        assert [(e.name, e.key) for e in report.errors] == [("bad", "2024-01-01T01:00:00+00:00")]
        assert "RuntimeError: cannot start explodes" in report.errors[0].error
        assert [f.name for f in report.failed_runs] == ["sad"]
        assert [f.name for f in report.fired] == ["sad", "good"]
        # The raising tick is not retried: it was claimed before the run was started.
        assert daemon.tick(at(hours=1, minutes=1)).errors == ()

    def test_a_tick_whose_start_failed_on_the_store_fires_later_once(self) -> None:
        """The tick's claim used to be taken before the run started: a store error at the
        start lost the tick for good. Now the run id is derived from the tick, so the
        retry (the next daemon tick) creates the run once."""
        pipeline = FakePipeline("p", MemoryRunStore(), schedules=(hourly(),), store_down=1)
        daemon = Daemon([pipeline])
        daemon.tick(at())
        failed = daemon.tick(at(hours=1))
        assert failed.fired == () and "connection refused" in failed.errors[0].error
        retried = daemon.tick(at(hours=1, minutes=1))
        assert [f.key for f in retried.fired] == ["2024-01-01T01:00:00+00:00"]
        assert daemon.tick(at(hours=1, minutes=2)).fired == ()
        assert len(pipeline.calls) == 1
        # the next hour's tick is not held back by it
        assert [f.key for f in daemon.tick(at(hours=2)).fired] == ["2024-01-01T02:00:00+00:00"]

    def test_partition_function_error_is_reported(self) -> None:
        def broken(tick: datetime) -> str:
            raise ValueError("no partition")

        pipeline = FakePipeline("p", MemoryRunStore(), schedules=(hourly(partition=broken),))
        daemon = Daemon([pipeline])
        daemon.tick(at())
        report = daemon.tick(at(hours=1))
        assert report.fired == () and pipeline.calls == []
        assert report.errors[0].error == "ValueError: no partition"

    def test_corrupt_cursor_is_reported_with_the_fix(self) -> None:
        store = MemoryRunStore()
        store.set_cursor("schedule:p:hourly", "yesterday")
        report = Daemon([FakePipeline("p", store, schedules=(hourly(),))]).tick(at())
        assert "delete that cursor" in report.errors[0].error


def listing_sensor(
    keys: Callable[[SensorContext], list[str]], *, name: str = "files", cursor: bool = False
) -> Sensor:
    def evaluate(context: SensorContext) -> SensorResult:
        found = keys(context)
        return SensorResult(
            run_requests=[RunRequest(run_key=k, partition=k) for k in found],
            cursor=max(found, default=None) if cursor else None,
        )

    return Sensor(name, evaluate, "ingest", interval=timedelta(seconds=30))


class TestSensors:
    def test_run_keys_fire_once_ever(self) -> None:
        pipeline = FakePipeline("p", MemoryRunStore(), sensors=(listing_sensor(lambda c: ["a"]),))
        daemon = Daemon([pipeline])
        first = daemon.tick(at())
        again = daemon.tick(at(minutes=1))
        assert [f.key for f in first.fired] == ["a"]
        assert again.fired == () and [s.key for s in again.skipped] == ["a"]
        assert pipeline.calls == [
            ("ingest", "a", {"sensor": "files", "run_key": "a"}),
        ]

    def test_interval_between_evaluations(self) -> None:
        contexts: list[SensorContext] = []

        def record(context: SensorContext) -> list[str]:
            contexts.append(context)
            return []

        pipeline = FakePipeline("p", MemoryRunStore(), sensors=(listing_sensor(record),))
        daemon = Daemon([pipeline])
        for seconds in (0, 10, 29, 30, 45, 61):
            daemon.tick(at(seconds=seconds))
        assert [c.now for c in contexts] == [at(), at(seconds=30), at(seconds=61)]
        assert [c.last_tick for c in contexts] == [None, at(), at(seconds=30)]

    def test_cursor_is_durable_across_daemons(self) -> None:
        store = MemoryRunStore()
        seen: list[str | None] = []
        files = ["2024-01-01.csv"]

        def new_files(context: SensorContext) -> list[str]:
            seen.append(context.cursor)
            return [f for f in files if context.cursor is None or f > context.cursor]

        sensor = listing_sensor(new_files, cursor=True)
        Daemon([FakePipeline("p", store, sensors=(sensor,))]).tick(at())
        files.append("2024-01-02.csv")
        restarted = FakePipeline("p", store, sensors=(sensor,))
        report = Daemon([restarted]).tick(at(minutes=1))
        assert seen == [None, "2024-01-01.csv"]
        assert [f.key for f in report.fired] == ["2024-01-02.csv"]

    def test_a_run_key_whose_start_failed_on_the_store_is_requested_again(self) -> None:
        seen: list[str | None] = []

        def files(context: SensorContext) -> list[str]:
            seen.append(context.cursor)
            return ["orders-1.csv"]

        sensor = listing_sensor(files, cursor=True)
        pipeline = FakePipeline("p", MemoryRunStore(), sensors=(sensor,), store_down=1)
        daemon = Daemon([pipeline])
        first = daemon.tick(at())
        assert first.fired == () and len(first.errors) == 1
        second = daemon.tick(at(minutes=5))
        assert [f.key for f in second.fired] == ["orders-1.csv"]
        assert seen[0] == seen[1]  # the cursor was not moved past the failed request
        assert daemon.tick(at(minutes=10)).fired == () and len(pipeline.calls) == 1

    def test_raising_sensor_is_reported_keeps_its_cursor_and_others_run(self) -> None:
        calls = {"n": 0}

        def flaky(context: SensorContext) -> SensorResult:
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError("bucket unreachable")
            return SensorResult([RunRequest(f"k{calls['n']}")], cursor=f"c{calls['n']}")

        cursors: list[str | None] = []

        def healthy(context: SensorContext) -> list[RunRequest]:
            cursors.append(context.cursor)
            return [RunRequest("h")]

        pipeline = FakePipeline(
            "p",
            MemoryRunStore(),
            sensors=(Sensor("flaky", flaky, "a"), Sensor("healthy", healthy, "b")),
        )
        daemon = Daemon([pipeline])
        daemon.tick(at())
        failed = daemon.tick(at(minutes=1))
        assert [(e.source, e.name) for e in failed.errors] == [("sensor", "flaky")]
        assert "OSError: bucket unreachable" in failed.errors[0].error
        seen: list[str | None] = []
        pipeline.sensors = (
            Sensor("flaky", lambda c: seen.append(c.cursor), "a"),
            pipeline.sensors[1],
        )
        daemon = Daemon([pipeline])
        daemon.tick(at(minutes=2))
        assert seen == ["c1"]
        assert [c[0] for c in pipeline.calls] == ["a", "b"]

    def test_request_targets_override_and_missing_target_is_an_error(self) -> None:
        def requests(context: SensorContext) -> list[RunRequest]:
            return [RunRequest("x", targets=["other"], tags={"k": "v"}), RunRequest("y")]

        pipeline = FakePipeline("p", MemoryRunStore(), sensors=(Sensor("s", requests),))
        report = Daemon([pipeline]).tick(at())
        assert pipeline.calls == [("other", None, {"k": "v", "sensor": "s", "run_key": "x"})]
        assert report.errors[0].key == "y" and "names no targets" in report.errors[0].error


class TestHousekeeping:
    def test_expire_and_prune_are_called_and_counted(self) -> None:
        pipelines = [FakePipeline("a", MemoryRunStore()), FakePipeline("b", MemoryRunStore())]
        report = Daemon(pipelines).tick(at())
        assert (report.expired, report.pruned) == (2, 4)
        assert pipelines[0].expire_calls == [at()]
        assert "expired 2, pruned 4, recovered 6" in report.summary()
        assert report.recovered == 6

    def test_expire_failure_is_reported(self) -> None:
        pipeline = FakePipeline("a", MemoryRunStore(), expire_error=RuntimeError("db down"))
        report = Daemon([pipeline]).tick(at())
        assert [(e.source, e.error) for e in report.errors] == [("expire", "RuntimeError: db down")]
        assert report.pruned == 2

    def test_clock_is_used_when_no_time_is_given(self) -> None:
        pipeline = FakePipeline("a", MemoryRunStore())
        assert Daemon([pipeline], clock=lambda: at(hours=3)).tick().now == at(hours=3)

    def test_naive_now_is_rejected(self) -> None:
        with pytest.raises(UsageError, match="naive"):
            Daemon([FakePipeline("a", MemoryRunStore())]).tick(datetime(2024, 1, 1))

    def test_duplicate_names_are_definition_errors(self) -> None:
        with pytest.raises(DefinitionError, match="two pipelines named 'a'"):
            Daemon([FakePipeline("a", MemoryRunStore()), FakePipeline("a", MemoryRunStore())])
        with pytest.raises(DefinitionError, match="two schedules named 'hourly'"):
            Daemon([FakePipeline("a", MemoryRunStore(), schedules=(hourly(), hourly()))])


class TestRunLoop:
    def test_run_ticks_until_stopped(self) -> None:
        stop = threading.Event()
        pipeline = FakePipeline("a", MemoryRunStore())
        times = iter([at(), at(seconds=1), at(seconds=2)])

        def clock() -> datetime:
            now = next(times)
            if now == at(seconds=2):
                stop.set()  # stop after this tick completes
            return now

        Daemon([pipeline], clock=clock).run(interval=0.001, stop=stop)
        assert pipeline.expire_calls == [at(), at(seconds=1), at(seconds=2)]

    def test_run_rejects_a_bad_interval(self) -> None:
        with pytest.raises(UsageError, match="interval"):
            Daemon([]).run(interval=0)

    def test_signal_handlers_set_the_stop_event_and_restore(self) -> None:
        stop = threading.Event()
        before = signal.getsignal(signal.SIGTERM)
        restore = install_signal_handlers(stop)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.wait(timeout=10)
        finally:
            restore()
        assert signal.getsignal(signal.SIGTERM) is before

    def test_signal_handlers_need_the_main_thread(self) -> None:
        errors: list[Exception] = []

        def install() -> None:
            try:
                install_signal_handlers(threading.Event())
            except UsageError as exc:
                errors.append(exc)

        thread = threading.Thread(target=install)
        thread.start()
        thread.join()
        assert len(errors) == 1 and "main thread" in str(errors[0])


@pytest.fixture(params=["memory", "sqlite"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """A factory of store handles that all see the same state, one per daemon."""
    if request.param == "memory":
        store = MemoryRunStore()
        yield lambda: store
        return
    opened: list[SQLiteRunStore] = []

    def open_store() -> SQLiteRunStore:
        opened.append(SQLiteRunStore(tmp_path / "flowstone.db"))
        return opened[-1]

    yield open_store
    for store in opened:
        store.close()


class TestTwoDaemons:
    def test_concurrent_daemons_never_fire_a_tick_or_run_key_twice(
        self, shared_store: Callable[[], Any]
    ) -> None:
        keys_by_minute = lambda c: [f"file-{m}" for m in range(c.now.minute + 1)]  # noqa: E731

        def make() -> FakePipeline:
            return FakePipeline(
                "p",
                shared_store(),
                schedules=(Schedule("every_minute", "* * * * *", "report", catch_up="all"),),
                sensors=(
                    Sensor(
                        "files",
                        lambda c: [RunRequest(k) for k in keys_by_minute(c)],
                        "ingest",
                        interval=timedelta(seconds=1),
                    ),
                ),
            )

        pipelines = [make(), make()]
        daemons = [Daemon([p]) for p in pipelines]
        steps = [T0 + timedelta(seconds=20 * i) for i in range(12)]  # 4 minutes
        barrier = threading.Barrier(2)
        failures: list[BaseException] = []

        def drive(daemon: Daemon) -> None:
            try:
                for now in steps:
                    barrier.wait()
                    report = daemon.tick(now)
                    assert report.errors == (), report.errors
            except BaseException as exc:
                failures.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=drive, args=(d,)) for d in daemons]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        calls = pipelines[0].calls + pipelines[1].calls
        schedule_ticks = [c[2]["tick"] for c in calls if "schedule" in c[2]]
        run_keys = [c[2]["run_key"] for c in calls if "sensor" in c[2]]
        assert sorted(schedule_ticks) == [f"2024-01-01T00:0{m}:00+00:00" for m in range(1, 5)]
        assert sorted(run_keys) == sorted(f"file-{m}" for m in range(5))

    def test_a_daemon_that_loses_the_race_reports_duplicates(self) -> None:
        """Interleave deterministically: B ticks completely between A's read and A's claims."""
        shared = MemoryRunStore()
        schedule = Schedule("every_minute", "* * * * *", "report", catch_up="all")
        sensor = Sensor("files", lambda c: [RunRequest("k")], "ingest")
        b = FakePipeline("p", shared, schedules=(schedule,), sensors=(sensor,))
        daemon_b = Daemon([b])

        class Interleaving:
            """A's view of the store: B's tick runs just before A's first claim."""

            def __init__(self) -> None:
                self.armed: tuple[str, datetime] | None = None

            def _maybe_interleave(self, hook: str) -> None:
                if self.armed is not None and self.armed[0] == hook:
                    when, self.armed = self.armed[1], None
                    daemon_b.tick(when)

            def get_cursor(self, name: str) -> str | None:
                return shared.get_cursor(name)

            def set_cursor(self, name: str, value: str, *, expected: str | None = None) -> bool:
                self._maybe_interleave("set_cursor")
                return shared.set_cursor(name, value, expected=expected)

            def claim_tick(self, name: str, tick: str) -> bool:
                self._maybe_interleave("claim_tick")
                return shared.claim_tick(name, tick)

            def get_run(self, run_id: str) -> Any:
                return shared.get_run(run_id)

            def create_run(self, run: Any, steps: Any) -> Any:
                return shared.create_run(run, steps)

        store_a = Interleaving()
        a = FakePipeline("p", store_a, schedules=(schedule,))
        Daemon([a]).tick(at())
        store_a.armed = ("claim_tick", at(minutes=3))
        report_a = Daemon([a]).tick(at(minutes=3))
        assert a.calls == []
        assert [s.reason for s in report_a.skipped] == [
            "already fired (claimed by another daemon)"
        ] * 3
        assert sorted(c[2]["tick"] for c in b.calls if "tick" in c[2]) == [
            f"2024-01-01T00:0{m}:00+00:00" for m in range(1, 4)
        ]
        # Sensors: B evaluates between A's read of the sensor state and A's claim of it.
        store_a.armed = ("set_cursor", at(minutes=4))
        sensor_a = FakePipeline("p", store_a, sensors=(sensor,))
        report = Daemon([sensor_a]).tick(at(minutes=4))
        assert sensor_a.calls == []
        assert [s.reason for s in report.skipped] == ["evaluated by another daemon"]
        assert [c[2]["run_key"] for c in b.calls if "run_key" in c[2]] == ["k"]


class TestWithARealPipeline:
    def test_schedule_and_sensor_start_real_runs(self) -> None:
        import flowstone as fs

        @fs.asset(partitions=fs.DailyPartitions("2023-12-01"))
        def daily_report(context: fs.Context) -> str:
            return f"report for {context.partition}"

        @fs.asset
        def ingest(context: fs.Context) -> str:
            return f"ingested {context.partition}"

        @fs.sensor(target="ingest")
        def new_files(context: SensorContext) -> list[RunRequest]:
            return [RunRequest(run_key="a.csv", partition="a.csv")]

        nightly = fs.Schedule("nightly", "0 2 * * *", "daily_report", partition=fs.previous_day)
        pipeline = fs.Pipeline(
            "etl",
            [daily_report, ingest],
            store="memory://",
            schedules=[nightly],
            sensors=[new_files],
        )
        daemon = fs.Daemon([pipeline])
        first = daemon.tick(datetime(2024, 1, 1, 12, tzinfo=UTC))
        second = daemon.tick(datetime(2024, 1, 2, 2, 0, 5, tzinfo=UTC))
        assert first.errors == second.errors == ()
        assert [(f.name, f.status) for f in first.fired] == [("new_files", "succeeded")]
        assert [(f.name, f.status) for f in second.fired] == [("nightly", "succeeded")]
        assert [s.reason for s in second.skipped] == ["run key already fired"]
        run = pipeline.store.get_run(second.fired[0].run_id or "")
        assert run is not None and run.tags["schedule"] == "nightly"
        assert pipeline.get("daily_report", date(2024, 1, 1)) == "report for 2024-01-01"
        assert pipeline.get("ingest", "a.csv") == "ingested a.csv"


def test_the_tick_log_names_its_pipelines(caplog: pytest.LogCaptureFixture) -> None:
    """A worker serving several pipelines logs one tick per pipeline: each line must say which
    (issue: ``daemon tick`` repeated with no pipeline name)."""

    @fs.asset
    def one() -> int:
        return 1

    first = fs.Pipeline("tick_first", [one], store="memory://")
    second = fs.Pipeline("tick_second", [one], store="memory://")
    with caplog.at_level(logging.INFO, logger="flowstone"):
        fs.Daemon([first]).tick()
        fs.Daemon([second]).tick()
    ticks = [r.getMessage() for r in caplog.records if "daemon tick" in r.getMessage()]
    assert len(ticks) == 2
    assert "tick_first" in ticks[0] and "tick_second" in ticks[1]
    first.close()
    second.close()


def test_a_sensor_can_ask_to_recompute_an_existing_partition(tmp_path: Path) -> None:
    """RunRequest(force=True): an object overwritten with new content is read again, not
    answered with the partition's earlier value."""
    contents = {"a.csv": "v1"}

    @fs.asset
    def loaded(context: fs.Context) -> str:
        return contents[str(context.partition)]

    seen: list[str] = []

    def arrivals(context: Any) -> Any:
        version = contents["a.csv"]
        if version in seen:
            return fs.SensorResult()
        seen.append(version)
        return fs.SensorResult([fs.RunRequest(f"a.csv@{version}", partition="a.csv", force=True)])

    p = fs.Pipeline(
        "overwrites", [loaded], store=f"sqlite:///{tmp_path / 'fs.db'}",
        sensors=[fs.Sensor("arrivals", arrivals, target="loaded")],
    )
    first = datetime.now(UTC)
    Daemon([p]).tick(first)
    assert p.get("loaded", "a.csv") == "v1"
    contents["a.csv"] = "v2"
    Daemon([p]).tick(first + timedelta(hours=1))  # past the sensor's minimum interval
    assert p.get("loaded", "a.csv") == "v2"
    p.close()
