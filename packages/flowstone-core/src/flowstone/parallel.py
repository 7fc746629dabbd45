"""Parallel branches joined into one value.

A parallel asset names branches, each ending in a *final* asset. The branches run
concurrently; when every branch is done the asset's function (the join) runs exactly
once with ``branches={name: value}``. In ``"partial"`` mode a branch that failed or was
skipped appears as :class:`BranchFailed` / :class:`BranchSkipped` instead of failing the
join, unless it is listed in ``required``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from flowstone.errors import UsageError
from flowstone.outcomes import to_seconds

__all__ = ["BranchFailed", "BranchSkipped", "Parallel"]


@dataclass(frozen=True, slots=True)
class BranchFailed:
    """A branch whose final asset failed (partial mode)."""

    branch: str
    error: str


@dataclass(frozen=True, slots=True)
class BranchSkipped:
    """A branch whose final asset was skipped, e.g. not selected by a router."""

    branch: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Parallel:
    """Declare named branches for a parallel asset.

    Args:
        branches: ``{branch name: final asset name}``.
        mode: ``"all_or_nothing"`` (any failed branch fails the asset) or ``"partial"``.
        required: in partial mode, the branches whose failure still fails the asset.
        timeout: seconds (or timedelta) the whole parallel may take, counted from the moment
            the first step of any branch starts; unfinished branches then fail.
        branch_timeout: the same per branch: one limit for all, or ``{branch: limit}``.
            A timed-out branch fails (a required one fails the join; an optional one
            reaches the join as ``BranchFailed`` saying it timed out). Timeouts are
            enforced by the sweeper / in-process dispatcher, never by holding a worker.

    Example:
        >>> Parallel(branches={"maps": "generate_maps", "news": "front_pages"}, mode="partial")
    """

    branches: Mapping[str, str]
    mode: Literal["all_or_nothing", "partial"] = "all_or_nothing"
    required: Collection[str] = field(default_factory=tuple)
    timeout: float | timedelta | None = None
    branch_timeout: float | timedelta | Mapping[str, float | timedelta] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.branches, Mapping) or not self.branches:
            raise UsageError(
                "Parallel(branches=...) needs a non-empty {branch: final_asset} mapping"
            )
        for branch, final in self.branches.items():
            if not isinstance(branch, str) or not branch or not isinstance(final, str) or not final:
                raise UsageError(
                    f"Parallel branch {branch!r}: {final!r} must map a branch name to an asset name"
                )
        if self.mode not in ("all_or_nothing", "partial"):
            raise UsageError(f"Parallel(mode={self.mode!r}) must be 'all_or_nothing' or 'partial'")
        unknown = [b for b in self.required if b not in self.branches]
        if unknown:
            raise UsageError(
                f"Parallel(required=...) names unknown branches {unknown}; "
                f"branches are {sorted(self.branches)}"
            )
        to_seconds(self.timeout, what="Parallel timeout")
        if isinstance(self.branch_timeout, Mapping):
            extra = sorted(set(self.branch_timeout) - set(self.branches))
            if extra:
                raise UsageError(
                    f"Parallel(branch_timeout=...) names unknown branches {extra}; "
                    f"branches are {sorted(self.branches)}"
                )
            for b, limit in self.branch_timeout.items():
                to_seconds(limit, what=f"Parallel branch_timeout[{b!r}]")
        else:
            to_seconds(self.branch_timeout, what="Parallel branch_timeout")

    @property
    def has_timeouts(self) -> bool:
        return self.timeout is not None or bool(self.branch_timeout)

    def limit(self, branch: str) -> float | None:
        """Seconds ``branch`` may run (the tighter of its own and the whole limit)."""
        own = (
            self.branch_timeout.get(branch)
            if isinstance(self.branch_timeout, Mapping)
            else self.branch_timeout
        )
        limits = [
            s
            for s in (
                to_seconds(own, what="branch_timeout"),
                to_seconds(self.timeout, what="timeout"),
            )
            if s is not None
        ]
        return min(limits) if limits else None

    def is_required(self, branch: str) -> bool:
        return self.mode == "all_or_nothing" or branch in self.required

    def branch_of(self, final_asset: str) -> str | None:
        for branch, final in self.branches.items():
            if final == final_asset:
                return branch
        return None
