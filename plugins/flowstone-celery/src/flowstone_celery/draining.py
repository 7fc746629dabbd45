"""Whether this worker is draining: its first SIGTERM (Celery's warm shutdown) arrived.

A draining worker finishes the step each pool process is running, but takes no
continuation after it: the step its finish claimed is put back to ``ready`` and published
for another worker (:func:`flowstone.engine.run_chain`'s ``stop``), so a warm shutdown
does not run up to ``FLOWSTONE_INLINE_STEPS`` more steps first.

The flag lives in shared memory created when this module is imported, in the worker's main
process before the pool forks, so every prefork pool process sees the main process set it
(threads and solo pools share the process anyway).
"""

from __future__ import annotations

import multiprocessing
from typing import Any

__all__ = ["begin", "requested", "reset"]

_flag: Any = multiprocessing.RawValue("b", 0)


def begin() -> None:
    """Mark this worker (and its pool processes) as draining."""
    _flag.value = 1


def requested() -> bool:
    """Whether the worker is draining: take no further continuation."""
    return bool(_flag.value)


def reset() -> None:
    """Clear the flag (a worker started again in the same process, tests)."""
    _flag.value = 0
