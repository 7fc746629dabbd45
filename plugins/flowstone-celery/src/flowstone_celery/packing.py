"""Packing: several ready steps of one run in one message, when they outnumber the slots.

A Celery message costs the worker's main process about 0.8 ms whatever the task does
(receive, decode, hand to the pool, acknowledge), as much as a trivial step's own work in
the pool process; for a run of 2,000 independent assets it was a third of the CPU spent
per step (see ``docs/performance.md``, "Distributed runtime"). When a run has more ready
steps than the workers have slots, one message per step buys no parallelism: the extra
messages only wait in the queue. So :meth:`CeleryExecutor.dispatch
<flowstone_celery.CeleryExecutor.dispatch>` then puts up to ``FLOWSTONE_PACK_STEPS`` of
them in one message (the list body :func:`~flowstone_celery.messages.parse_batch` reads),
keeping at least one message per slot. A run with fewer ready steps than slots is packed
too when the queue already holds a message for every slot (the executor asks the broker
how many wait, at most every ``BACKLOG_SECONDS``): its steps would wait behind those
anyway, and one message costs the workers a third of what three do.

Nothing about a step changes inside a pack: the worker claims, runs, fences, retries and
records each step on its own (a redelivered pack finds the steps it already ran finished
and skips them). The steps a pack has not started are still ``ready`` in the store, so
the sweeper re-sends them if the pack is lost; and a worker hands them back to the broker
(one message each, :func:`unstarted`) when it starts draining, or once the pack has taken
``FLOWSTONE_PACK_SECONDS``, so slow steps still spread over the workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, TypeVar

from flowstone_celery.messages import MessageError, parse_message

__all__ = ["BACKLOG_SECONDS", "default_slots", "pack", "pack_size", "unstarted"]

log = logging.getLogger("flowstone.celery")
_T = TypeVar("_T")
BACKLOG_SECONDS = 0.05  # how long the executor trusts the queue length it last read


def pack_size(ready: int, *, slots: int, most: int, backlog: int = 0) -> int:
    """How many steps of one run each message carries when ``ready`` of them are
    dispatched at once: 1 while each can have a slot of its own (``ready <= slots``),
    otherwise as many as still leaves every slot a message, at most ``most``.

    ``backlog`` is how many messages already wait in the queue: once they fill every
    slot, no worker is free for this run's steps anyway, so they share as few messages
    as ``most`` allows.

    Example:
        >>> pack_size(2000, slots=4, most=8), pack_size(12, slots=4, most=8)
        (8, 3)
        >>> pack_size(3, slots=4, most=8), pack_size(3, slots=4, most=8, backlog=40)
        (1, 3)
    """
    if most <= 1 or ready <= 1:
        return 1
    if backlog >= slots:
        return min(most, ready)
    if ready <= slots:
        return 1
    return max(1, min(most, ready // max(1, slots)))


def pack(bodies: Sequence[_T], size: int) -> list[_T | list[_T]]:
    """``bodies`` cut into messages of ``size`` (a message of one step stays a plain
    step message, not a list)."""
    if size <= 1:
        return list(bodies)
    out: list[_T | list[_T]] = []
    for start in range(0, len(bodies), size):
        chunk = list(bodies[start : start + size])
        out.append(chunk if len(chunk) > 1 else chunk[0])
    return out


def default_slots(known: int | None) -> int:
    """The slot count packing assumes without ``FLOWSTONE_WORKER_SLOTS``: the worker's own
    concurrency (``known``) inside a worker, else this machine's CPU count."""
    return known or os.cpu_count() or 1


def unstarted(bodies: Sequence[object]) -> list[dict[str, Any]]:
    """The valid step messages among ``bodies`` (the rest of a pack a worker hands back),
    re-serialised from their parsed form; malformed ones are logged and left out (a
    worker would drop them anyway)."""
    out = []
    for body in bodies:
        try:
            out.append(parse_message(body).to_json())
        except MessageError as exc:
            log.error("dropping malformed FlowStone step message: %s", exc)
    return out
