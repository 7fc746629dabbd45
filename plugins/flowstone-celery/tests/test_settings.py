from __future__ import annotations

import pytest

from flowstone.errors import UsageError
from flowstone_celery import load_settings


def test_defaults_point_at_local_redis_and_flowstone_queue() -> None:
    s = load_settings()
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.queue == "flowstone"
    assert s.visibility_timeout == 3600
    assert s.sweeper is True
    assert s.database_url is None


def test_environment_variables_are_read_when_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWSTONE_BROKER_URL", "amqp://guest:guest@rabbit:5672//")
    monkeypatch.setenv("FLOWSTONE_QUEUE", "etl.high")
    monkeypatch.setenv("FLOWSTONE_SWEEP_INTERVAL", "2.5")
    monkeypatch.setenv("FLOWSTONE_SWEEPER", "false")
    monkeypatch.setenv("FLOWSTONE_PIPELINES", "a.py:pipeline, pkg.mod:p ,")
    s = load_settings()
    assert s.broker_url.startswith("amqp://")
    assert s.queue == "etl.high"
    assert s.sweep_interval == 2.5
    assert s.sweeper is False
    assert s.pipeline_specs == ["a.py:pipeline", "pkg.mod:p"]


def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWSTONE_VISIBILITY_TIMEOUT", "-1")
    with pytest.raises(UsageError, match="FLOWSTONE_VISIBILITY_TIMEOUT"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("FLOWSTONE_FINISH_BATCH", "0"), ("FLOWSTONE_FINISH_BATCH", "65"),
     ("FLOWSTONE_FINISH_BATCH", "many"), ("FLOWSTONE_FINISH_BATCH_SECONDS", "-0.5"),
     ("FLOWSTONE_FINISH_BATCH_SECONDS", "61")],
)  # fmt: skip
def test_finish_batch_settings_are_checked(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(UsageError, match=variable):
        load_settings()


def test_finish_batch_settings_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (load_settings().finish_batch, load_settings().finish_batch_seconds) == (16, 0.02)
    monkeypatch.setenv("FLOWSTONE_FINISH_BATCH", "1")
    monkeypatch.setenv("FLOWSTONE_FINISH_BATCH_SECONDS", "0.5")
    s = load_settings()
    assert (s.finish_batch, s.finish_batch_seconds) == (1, 0.5)


def test_bad_queue_name_is_rejected() -> None:
    with pytest.raises(UsageError, match="FLOWSTONE_QUEUE"):
        load_settings(queue="no spaces please")


def test_passwords_never_appear_in_errors_or_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWSTONE_BROKER_URL", "http://user:s3cret@host/")
    with pytest.raises(UsageError) as info:
        load_settings()
    assert "s3cret" not in str(info.value)
    assert "FLOWSTONE_BROKER_URL" in str(info.value)
    s = load_settings(broker_url="redis://:s3cret@host:6379/0",
                      database_url="postgresql+asyncpg://u:s3cret@db/x")
    assert "s3cret" not in repr(s)
    assert "s3cret" not in str(s.describe())


def test_long_retries_are_left_to_the_sweeper() -> None:
    assert load_settings(visibility_timeout=600).max_countdown == 300
