"""Following a run that workers execute (``flowstone run`` on a queue-based executor).

The run is polled in short slices. Between slices, on a terminal, one progress line shows
the steps done out of the total, the assets running and the progress of deferred
scatters. When the run has not settled after :data:`ASK_AFTER` seconds and none of its
steps is running, the executor is asked whether any live worker serves the pipeline
(:class:`~flowstone.protocols.WorkerPresence`); if none does, the user is told so with the
command that starts one, instead of waiting silently. The run keeps waiting: a worker
started then picks the steps up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from flowstone import running
from flowstone._cli.run_progress import run_view
from flowstone.runs import RunResult

if TYPE_CHECKING:
    from flowstone.pipeline import Pipeline
    from flowstone.records import StepRecord

__all__ = ["ASK_AFTER", "follow", "progress_line"]

ASK_AFTER = 2.0
"""Seconds a run may sit unsettled before the workers are asked whether any serves it."""
_ASK_AGAIN = 10.0  # while none serves it
_SLICE = 0.5  # seconds of waiting between progress updates
_DONE_STATES = frozenset({"succeeded", "failed", "upstream_failed", "skipped", "cancelled"})


@dataclass(slots=True)
class _Line:
    """The one progress line on a terminal (empty when not on one)."""

    stream: TextIO
    live: bool
    shown: bool = False

    def show(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def say(self, text: str) -> None:
        """A message of its own (the progress line is redrawn by the next update)."""
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()


def progress_line(steps: list[StepRecord], scatters: str | None) -> str:
    """``2/5 steps, running: clean, enrich; scatter 'fetch': 10/40 items``."""
    done = sum(1 for s in steps if s.state in _DONE_STATES)
    parts = [f"{done}/{len(steps)} steps"]
    running_now = sorted({s.asset for s in steps if s.state == "running"})
    if running_now:
        parts.append("running: " + ", ".join(running_now))
    if scatters:
        parts.append(scatters)
    return ", ".join(parts)


def follow(
    pipeline: Pipeline,
    started: RunResult,
    *,
    spec: str,
    timeout: float | None,
    stream: TextIO,
    quiet: bool = False,
) -> RunResult:
    """Wait for ``started`` (handed to workers) to settle; cancel it at ``timeout`` as
    ``Pipeline.run`` does. Progress goes to ``stream`` when it is a terminal; the
    no-worker notice goes there unless ``quiet``."""
    run_id = started.run_id
    line = _Line(stream, live=not quiet and stream.isatty())
    presence = pipeline.runtime.capabilities.worker_presence
    begin = time.monotonic()
    deadline = None if timeout is None else begin + timeout
    next_ask = begin + ASK_AFTER
    warned = False
    try:
        while True:
            now = time.monotonic()
            wait_for = _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - now))
            [result] = pipeline.wait(run_id, timeout=wait_for)
            view = run_view(pipeline, result.run)
            if view.status != "running":
                return result
            if deadline is not None and time.monotonic() >= deadline:
                line.clear()
                running.time_out(pipeline.runner, run_id, float(timeout or 0.0))
                return pipeline.result(run_id)
            steps = pipeline.store.list_steps(run_id)
            line.show(progress_line(steps, view.progress_text()))
            if presence is None or time.monotonic() < next_ask:
                continue
            if any(s.state == "running" for s in steps):
                next_ask = time.monotonic() + ASK_AFTER  # a worker has it
                continue
            serving = presence.serving(pipeline.name)
            next_ask = time.monotonic() + _ASK_AGAIN
            if serving == 0 and not warned and not quiet:
                line.say(
                    f"flowstone: no live worker serves pipeline {pipeline.name!r}; its steps "
                    "wait until one does. Start one (same broker and queue settings) with:\n"
                    f"  flowstone worker --pipeline {spec}"
                )
                warned = True
            elif serving and warned and not quiet:
                line.say(f"flowstone: {serving} worker(s) now serve pipeline {pipeline.name!r}")
                warned = False
    finally:
        line.clear()
