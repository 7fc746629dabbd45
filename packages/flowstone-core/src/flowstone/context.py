"""The run context an asset receives in its ``context`` parameter."""

from __future__ import annotations

import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from flowstone.errors import UsageError
from flowstone.outcomes import SignalGate, to_seconds
from flowstone.resources import Resources
from flowstone.scatter import Batch

__all__ = ["Context", "new_gate_token"]

# Names a user may guess for the scatter item or batch, and where those really are.
_ITEM = "the current scatter item is context.scatter_item"
_BATCH = "a batch's items are context.batch.items (with Batching)"
_MISNAMED = {
    "item": _ITEM,
    "scatter": _ITEM,
    "current_item": _ITEM,
    "items": _BATCH,
    "batch_items": _BATCH,
}

_TOKEN_PREFIX = "fsg_"  # noqa: S105 - a public prefix, not a secret


def new_gate_token() -> str:
    """256 random bits, URL-safe, with a recognisable prefix."""
    return _TOKEN_PREFIX + secrets.token_urlsafe(32)


class StepLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``context.log``: a logger that also keeps the step's last lines (INFO and above,
    at most :data:`KEPT_LOG_LINES`, each cut to :data:`KEPT_LOG_CHARS`), which the engine
    records with the materialization (metadata ``logs``) for ``flowstone show`` and the UI."""

    def __init__(self, logger: logging.Logger, extra: Mapping[str, object]) -> None:
        super().__init__(logger, extra)
        self.lines: deque[str] = deque(maxlen=KEPT_LOG_LINES)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if level >= logging.INFO:
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = f"{msg} {args}"
            self.lines.append(f"{logging.getLevelName(level)} {text}"[:KEPT_LOG_CHARS])
        super().log(level, msg, *args, **kwargs)


KEPT_LOG_LINES = 50
KEPT_LOG_CHARS = 500


class Context:
    """Everything an asset may want to know about the run it is part of.

    Attributes:
        run_id: the run's id.
        pipeline: the pipeline's name.
        asset: this asset's name.
        partition: the partition key with its original type (a ``date`` stays a ``date``),
            or None.
        partition_key: the encoded partition ("" when unpartitioned).
        resources: the resources this asset ``requires``.
        log: a logger that tags records with ``run_id``, ``pipeline``, ``asset``,
            ``partition`` (encoded) and ``attempt``.
        attempt: 1 on the first attempt, 2 on the first retry...
        scatter_item: the current item in a scatter asset (None otherwise).
        batch: the current :class:`~flowstone.scatter.Batch` in a batched scatter.
        metadata: a dict the asset may add JSON-able entries to; recorded with the
            materialization.
        lease_lost: a :class:`threading.Event` set when this attempt lost its claim on
            the step (its lease expired and another runner claimed it again): nothing this
            attempt returns will be committed, so a long asset may check
            ``context.lease_lost.is_set()`` and stop early.
    """

    __slots__ = (
        "_gate",
        "_log",
        "_logger",
        "asset",
        "attempt",
        "batch",
        "lease_lost",
        "metadata",
        "partition",
        "partition_key",
        "pipeline",
        "resources",
        "run_id",
        "scatter_item",
    )

    def __init__(
        self,
        *,
        run_id: str,
        pipeline: str,
        asset: str,
        partition: Any,
        partition_key: str,
        resources: Resources | Mapping[str, Any] | None = None,
        attempt: int = 1,
        scatter_item: Any = None,
        batch: Batch | None = None,
        logger: logging.Logger | None = None,
        lease_lost: threading.Event | None = None,
    ) -> None:
        self.run_id = run_id
        self.pipeline = pipeline
        self.asset = asset
        self.partition = partition
        self.partition_key = partition_key
        self.resources = (
            resources if isinstance(resources, Resources) else Resources(resources or {})
        )
        self.attempt = attempt
        self.scatter_item = scatter_item
        self.batch = batch
        self.metadata: dict[str, Any] = {}
        self.lease_lost = lease_lost if lease_lost is not None else threading.Event()
        self._logger = logger
        self._log: StepLog | None = None  # made on first use: most assets never log
        self._gate: SignalGate | None = None

    @property
    def log(self) -> StepLog:
        """A logger that tags records with ``run_id``, ``pipeline``, ``asset``,
        ``partition`` (encoded) and ``attempt``, and keeps the step's lines."""
        if self._log is None:
            self._log = StepLog(
                self._logger or logging.getLogger(f"flowstone.asset.{self.asset}"),
                {
                    "run_id": self.run_id,
                    "pipeline": self.pipeline,
                    "asset": self.asset,
                    "partition": self.partition_key,
                    "attempt": self.attempt,
                },
            )
        return self._log

    @property
    def log_lines(self) -> tuple[str, ...]:
        """The lines :attr:`log` kept so far (INFO and above; none if it was not used)."""
        return () if self._log is None else tuple(self._log.lines)

    def signal_gate(
        self,
        timeout: float | timedelta | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> SignalGate:
        """Create the signal gate for this run/asset/partition; return it from the asset.

        The token is 256 random bits, bound to exactly this run, asset and partition,
        single-use, and expires after ``timeout``. Calling twice returns the same gate.

        ``on_token(token)`` is how to hand the token to the external system: it is called
        once the gate is recorded, so a callback that comes back at once finds it (handing
        the token out from the asset itself races with the record). If it raises, the gate
        expires (``on_timeout``, or the asset fails naming the error).

        Example:
            >>> gate = context.signal_gate(timedelta(hours=1), on_token=lambda t: submit(job, t))
        """
        if on_token is not None and not callable(on_token):
            raise UsageError(f"signal_gate(on_token=...) must be callable, got {on_token!r}")
        if self._gate is None:
            seconds = to_seconds(timeout, what="signal_gate timeout")
            expires = (
                datetime.now(UTC) + timedelta(seconds=seconds) if seconds is not None else None
            )
            self._gate = SignalGate(
                token=new_gate_token(),
                expires_at=expires,
                metadata=dict(metadata or {}),
                deliver=on_token,
            )
        return self._gate

    @property
    def gate(self) -> SignalGate | None:
        return self._gate

    if not TYPE_CHECKING:  # (a typed __getattr__ would hide every misspelling from mypy)

        def __getattr__(self, name: str) -> Any:
            hint = _MISNAMED.get(name)
            if hint is None:
                raise AttributeError(f"'Context' object has no attribute {name!r}")
            raise AttributeError(f"Context has no attribute {name!r}: {hint}")

    def __repr__(self) -> str:
        return (
            f"Context(run_id={self.run_id!r}, asset={self.asset!r}, "
            f"partition={self.partition!r}, attempt={self.attempt})"
        )
