"""Configuration of the Celery executor and worker, read from ``FLOWSTONE_*`` variables.

Nothing is read at import: :func:`load_settings` reads the environment when an executor
or a worker is built. Passwords in URLs never appear in ``repr`` or in error messages.
"""

from __future__ import annotations

import re
from typing import Any

from kombu.utils.url import maybe_sanitize_url
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowstone.errors import UsageError
from flowstone_celery.messages import MAX_BATCH

__all__ = ["CelerySettings", "load_settings", "safe_url"]

_QUEUE = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")
_BROKER_SCHEMES = ("redis://", "rediss://", "amqp://", "amqps://", "pyamqp://", "memory://",
                   "redis+socket://", "sentinel://")


def safe_url(url: str | None) -> str:
    """``url`` with any password replaced by ``**``, safe to log."""
    if not url:
        return "<unset>"
    return str(maybe_sanitize_url(url, mask="**"))


class CelerySettings(BaseSettings):
    """Every setting, with its environment variable (prefix ``FLOWSTONE_``).

    Attributes:
        broker_url: ``FLOWSTONE_BROKER_URL``, a Redis (``redis://``) or RabbitMQ
            (``amqp://``) URL. Only transport: Postgres holds the state.
        database_url: ``FLOWSTONE_DATABASE_URL``, the run store the pipelines use (read by
            core when a pipeline is built; kept here so the worker can say what it uses).
        queue: ``FLOWSTONE_QUEUE``, the queue step messages go to (and workers consume).
        visibility_timeout: ``FLOWSTONE_VISIBILITY_TIMEOUT`` seconds before Redis hands an
            unacknowledged message to another worker; must exceed the longest asset.
        sweep_interval: ``FLOWSTONE_SWEEP_INTERVAL`` seconds between sweeps (recovery,
            timeouts, schedules and sensors).
        recover_after: ``FLOWSTONE_RECOVER_AFTER`` seconds a step may stay ``ready`` before
            the sweeper assumes its message was lost and sends it again.
        lease_seconds: ``FLOWSTONE_LEASE_SECONDS``: overrides the pipelines'
            ``lease_seconds`` on workers (how soon a dead worker's step is taken over).
        prefetch: ``FLOWSTONE_PREFETCH``, Celery's ``worker_prefetch_multiplier``.
        sweeper: ``FLOWSTONE_SWEEPER``: run the sweeper inside workers (one worker per
            interval does the work, decided by the store).
        pipelines: ``FLOWSTONE_PIPELINES``, comma-separated ``FILE.py:ATTR`` /
            ``MODULE:ATTR`` specs for ``celery -A flowstone_celery.worker_app worker``.
        infra_retries: ``FLOWSTONE_INFRA_RETRIES``: how often a step message is retried
            (with backoff) when the store or broker fails; after that the sweeper takes over.
        inline_steps: ``FLOWSTONE_INLINE_STEPS``: how many follow-up steps a worker runs
            itself, one after the other, after the step it received (each time the first
            step that became ready; the others are published). Saves a broker round trip
            per chain link or parallel join; ``0`` publishes every step.
        metrics_port: ``FLOWSTONE_METRICS_PORT``: serve ``/metrics`` and ``/healthz`` from
            the worker on this port (needs ``flowstone-observability``); unset: no server.
        metrics_host: ``FLOWSTONE_METRICS_HOST``: the address that server binds
            (default ``127.0.0.1``, this machine only).
        batch_steps: ``FLOWSTONE_BATCH_STEPS``: how many steps of different runs one
            message may carry when many runs start at once (``Pipeline.run_many``); the
            worker runs them one after the other. ``1`` sends one message per step.
        pack_steps: ``FLOWSTONE_PACK_STEPS``: how many ready steps of *one* run one message
            may carry when the run has more ready steps than the workers have slots
            (``worker_slots``); the worker runs them one after the other, each claimed,
            fenced, retried and recorded on its own. ``1`` never packs.
        pack_seconds: ``FLOWSTONE_PACK_SECONDS``: once a worker has spent this long on one
            message's steps, it publishes the steps it has not started (one message each)
            instead of running them itself, so slow steps still spread over the workers.
        finish_batch: ``FLOWSTONE_FINISH_BATCH``: how many finishes of a message's steps
            a worker may commit in one transaction (one commit and one lock of each run's
            row per batch, when the run store supports it, as PostgreSQL does); each step
            is still fenced and recorded on its own. ``1`` commits every finish alone.
        finish_batch_seconds: ``FLOWSTONE_FINISH_BATCH_SECONDS``: how long a finish waits
            for the rest of its batch at most; then the batch is committed, before the
            next step starts or by a timer while it runs. A join's finish carried past
            its message (:mod:`flowstone_celery.carried`) waits no longer either.
        dispatch_linger_seconds: ``FLOWSTONE_DISPATCH_LINGER_SECONDS``: outside a worker,
            while the queue holds a message for every slot, how long the steps of a run
            just started may wait for the next runs' steps, to share one message
            (:mod:`flowstone_celery.lingering`); ``0`` publishes every dispatch at once.
        worker_slots: ``FLOWSTONE_WORKER_SLOTS``: how many steps all workers run at once
            (the sum of their ``--concurrency``). Unset: a worker uses its own
            concurrency, any other process its CPU count. Packing starts only above it.
    """

    model_config = SettingsConfigDict(
        env_prefix="FLOWSTONE_", case_sensitive=False, extra="ignore", hide_input_in_errors=True,
    )

    broker_url: str = Field("redis://127.0.0.1:6379/0", repr=False)
    database_url: str | None = Field(None, repr=False)
    queue: str = "flowstone"
    visibility_timeout: float = Field(3600.0, gt=0)
    sweep_interval: float = Field(15.0, gt=0)
    recover_after: float = Field(60.0, gt=0)
    lease_seconds: float | None = Field(None, gt=0)
    prefetch: int = Field(4, ge=1, le=1000)
    sweeper: bool = True
    pipelines: str = ""
    infra_retries: int = Field(10, ge=0, le=1000)
    inline_steps: int = Field(16, ge=0, le=10_000)
    batch_steps: int = Field(8, ge=1, le=MAX_BATCH)
    pack_steps: int = Field(16, ge=1, le=MAX_BATCH)
    pack_seconds: float = Field(0.5, gt=0)
    finish_batch: int = Field(16, ge=1, le=MAX_BATCH)
    finish_batch_seconds: float = Field(0.02, ge=0, le=60)
    dispatch_linger_seconds: float = Field(0.005, ge=0, le=60)
    worker_slots: int | None = Field(None, ge=1, le=1_000_000)
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    @field_validator("broker_url")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        if not value.startswith(_BROKER_SCHEMES):
            raise ValueError(
                "must be a Redis (redis://host:6379/0) or RabbitMQ "
                "(amqp://user:pass@host:5672//) URL"
            )
        return value

    @field_validator("queue")
    @classmethod
    def _check_queue(cls, value: str) -> str:
        if not _QUEUE.match(value):
            raise ValueError("must be 1-200 letters, digits, '_', '-', '.' or ':'")
        return value

    @property
    def pipeline_specs(self) -> list[str]:
        """``pipelines`` split on commas, blanks dropped."""
        return [s.strip() for s in self.pipelines.split(",") if s.strip()]

    @property
    def max_countdown(self) -> float:
        """Longest delay sent as a Celery countdown. Redis redelivers a delayed message
        after the visibility timeout, so longer retries are left to the sweeper."""
        return self.visibility_timeout / 2

    def describe(self) -> dict[str, Any]:
        """The settings with passwords masked (for logs and ``flowstone worker`` banners)."""
        out = self.model_dump()
        out["broker_url"] = safe_url(self.broker_url)
        out["database_url"] = safe_url(self.database_url)
        return out


def load_settings(**overrides: Any) -> CelerySettings:
    """Read ``FLOWSTONE_*`` from the environment (``overrides`` win).

    Raises:
        UsageError: a variable has an invalid value; the message names the variable
            and never echoes its value.
    """
    try:
        return CelerySettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"FLOWSTONE_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise UsageError(f"invalid FlowStone Celery settings: {problems}") from None
