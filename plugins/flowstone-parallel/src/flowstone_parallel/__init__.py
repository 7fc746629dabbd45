"""FlowStone parallel branches on Celery + Postgres, with a durable exactly-once join record.

Importing this package has no side effects. FlowStone finds the coordinator through the
``celery`` entry point in ``flowstone.parallel_coordinators``; the Celery executor uses it
automatically once this distribution is installed. Read a join's record with
:func:`join_record`.
"""

from __future__ import annotations

from flowstone_parallel._version import __version__
from flowstone_parallel.coordinator import DurableParallelCoordinator
from flowstone_parallel.records import (
    JOIN_NOTE,
    METADATA_KEY,
    REPEATED_KIND,
    BranchRecord,
    JoinRecord,
    join_record,
)

__all__ = [
    "JOIN_NOTE",
    "METADATA_KEY",
    "REPEATED_KIND",
    "BranchRecord",
    "DurableParallelCoordinator",
    "JoinRecord",
    "__version__",
    "join_record",
]
