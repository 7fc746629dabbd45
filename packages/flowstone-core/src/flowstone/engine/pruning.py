"""Pruning values no record points at (orphans).

Every attempt stores its value at its own location, and the committed record names the
one it committed (see :class:`~flowstone.protocols.StorageKey`). What is left over is an
orphan: the value of an attempt whose finish was refused (a stale runner, fenced out), or
of a runner that died between writing its value and finishing. ``prune_orphan_values``
asks each IO manager that can list its values (:class:`~flowstone.protocols.ValuePruning`)
for those that crossed the retention since its last pass, asks the store which of them a
record points at (:class:`~flowstone.protocols.ReferencedValues`), and deletes the rest.

* The cutoff is ``value_retention`` ago (one day by default): a younger value may belong
  to a step that is still running and has not committed its record, so the retention
  must exceed the longest step.
* Each value is looked at once, when it crosses the retention: a cursor per pipeline and
  IO manager (``flowstone.values-pruned:<pipeline>:<io manager>``) keeps the last cutoff,
  and a pass runs at most every ``_EVERY``. Setting the cursor is a compare-and-set, so
  two daemons or sweepers never prune the same window twice.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from itertools import islice

from flowstone.runtime import Runtime

__all__ = ["prune_orphan_values"]

log = logging.getLogger("flowstone.engine")
_CHUNK = 500
_EVERY = timedelta(hours=1)


def prune_orphan_values(runtime: Runtime, now: datetime) -> int:
    """Delete this pipeline's values that crossed ``value_retention`` since the last pass
    and that no record points at; return how many. Does nothing if the store cannot say
    what is referenced."""
    referenced = runtime.capabilities.referenced_values
    if referenced is None:
        return 0
    store = runtime.store
    cutoff = now - timedelta(seconds=runtime.policies.value_retention)
    deleted = 0
    for name, manager in runtime.capabilities.value_pruning.items():
        cursor = f"flowstone.values-pruned:{runtime.name}:{name}"
        last = store.get_cursor(cursor)
        since = datetime.fromisoformat(last) if last else None
        if since is not None and cutoff - since < _EVERY:
            continue
        if not store.set_cursor(cursor, cutoff.isoformat(), expected=last):
            continue  # another process took this window
        found = manager.stored_before(cutoff, pipeline=runtime.name, since=since)
        while chunk := list(islice(found, _CHUNK)):
            kept = referenced.referenced_locations(name, chunk)
            for location in chunk:
                if location not in kept:
                    runtime.values.manager(name).delete(location)
                    deleted += 1
    if deleted:
        log.info("pipeline %s: pruned %d orphaned values", runtime.name, deleted)
    return deleted
