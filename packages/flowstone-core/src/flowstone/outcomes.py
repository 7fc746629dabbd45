"""What an asset may return besides a plain value.

* :class:`WaitForApproval` — pause until a human approves (the ``value`` is then stored) or
  rejects (the asset fails); ``timeout`` fails it when nobody decides in time.
* :class:`SignalGate` — pause until an external system calls back with the gate's token
  (create it with ``context.signal_gate(...)``).
* :class:`Skip` — record the asset as skipped; dependents that require it are skipped too.
* :class:`Retry` — ask for another attempt later without counting it as an error.

Raising an exception is failure. No worker is held while an asset waits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flowstone.errors import UsageError

__all__ = ["Retry", "SignalGate", "Skip", "WaitForApproval", "to_seconds"]


def to_seconds(value: float | int | timedelta | None, *, what: str) -> float | None:
    """Normalise a duration given as seconds or ``timedelta``; reject negatives clearly."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise UsageError(
            f"{what} must be a number of seconds or a datetime.timedelta, "
            f"got {type(value).__name__}"
        )
    if seconds < 0:
        raise UsageError(f"{what} must not be negative, got {seconds}s")
    return seconds


@dataclass(frozen=True, slots=True)
class WaitForApproval:
    """Pause the asset until someone approves or rejects it.

    Example:
        >>> @asset
        ... def trade(quote):
        ...     return WaitForApproval("large trade", value=quote, timeout=timedelta(hours=24))
    """

    message: str
    value: Any = None
    timeout: float | timedelta | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.message, str) or not self.message.strip():
            raise UsageError(
                "WaitForApproval(message=...) needs a non-empty message for the approver"
            )
        to_seconds(self.timeout, what="WaitForApproval timeout")


@dataclass(frozen=True, slots=True)
class SignalGate:
    """A pending external callback. Create with ``context.signal_gate(timeout=...)``.

    ``token`` is the secret to hand to the external system; it resumes exactly this
    run/asset/partition, once, before ``expires_at``. ``deliver`` (``on_token=`` of
    ``context.signal_gate``) is called with it once the gate is recorded.
    """

    token: str
    expires_at: datetime | None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    deliver: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:  # never print the secret in logs
        return f"SignalGate(token='{self.token[:8]}…', expires_at={self.expires_at!r})"


@dataclass(frozen=True, slots=True)
class Skip:
    """Record the asset as skipped, with a reason."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Retry:
    """Run the asset again after ``after`` (seconds or timedelta); not counted as an error."""

    after: float | timedelta = 0.0
    reason: str = ""

    def __post_init__(self) -> None:
        to_seconds(self.after, what="Retry(after=...)")

    @property
    def seconds(self) -> float:
        return to_seconds(self.after, what="Retry(after=...)") or 0.0
