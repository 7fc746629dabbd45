"""Per-asset retry policy (seed: retries were hard-coded to 5 attempts for every asset)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from flowstone.errors import UsageError
from flowstone.outcomes import to_seconds

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how fast to retry an asset that raised.

    Args:
        max_attempts: total attempts including the first (1 = never retry).
        backoff: ``"exponential"`` (base * 2**n), ``"linear"`` (base * n) or ``"fixed"``.
        base_delay: seconds (or timedelta) before the first retry.
        max_delay: cap on any single delay.
        jitter: fraction of the delay added or removed at random (0 disables).
        retry_on: exception types worth retrying; others fail at once.

    Example:
        >>> RetryPolicy(max_attempts=5, backoff="exponential", base_delay=0.5, max_delay=30)
    """

    max_attempts: int = 1
    backoff: Literal["exponential", "linear", "fixed"] = "exponential"
    base_delay: float | timedelta = 1.0
    max_delay: float | timedelta = 300.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise UsageError("RetryPolicy(max_attempts=...) must be an int >= 1")
        if self.max_attempts < 1:
            raise UsageError(
                f"RetryPolicy(max_attempts={self.max_attempts}) must be >= 1 "
                "(1 means run once, never retry)"
            )
        if self.backoff not in ("exponential", "linear", "fixed"):
            raise UsageError(
                f"RetryPolicy(backoff={self.backoff!r}) must be 'exponential', 'linear' or 'fixed'"
            )
        to_seconds(self.base_delay, what="RetryPolicy base_delay")
        to_seconds(self.max_delay, what="RetryPolicy max_delay")
        if not 0 <= self.jitter <= 1:
            raise UsageError(f"RetryPolicy(jitter={self.jitter}) must be between 0 and 1")
        if not isinstance(self.retry_on, tuple) or not all(
            isinstance(t, type) and issubclass(t, BaseException) for t in self.retry_on
        ):
            raise UsageError("RetryPolicy(retry_on=...) must be a tuple of exception classes")

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        """Whether a failure on ``attempt`` (1-based) earns another attempt."""
        return attempt < self.max_attempts and isinstance(error, self.retry_on)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed ``attempt`` (1-based) before the next one."""
        base = to_seconds(self.base_delay, what="base_delay") or 0.0
        cap = to_seconds(self.max_delay, what="max_delay") or 0.0
        if self.backoff == "exponential":
            raw = base * 2.0 ** (attempt - 1)
        elif self.backoff == "linear":
            raw = base * attempt
        else:
            raw = base
        raw = min(raw, cap)
        if self.jitter and raw > 0:
            spread = raw * self.jitter
            raw += (rng or random).uniform(-spread, spread)
        return max(0.0, min(raw, cap))
