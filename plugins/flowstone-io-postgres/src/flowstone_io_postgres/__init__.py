"""FlowStone on PostgreSQL: durable run store, IO manager and item reader.

Importing this package has no side effects: nothing connects, nothing reads the
environment, nothing registers. FlowStone finds these classes through the entry points in
this distribution's ``pyproject.toml`` (``postgres`` in ``flowstone.run_stores``,
``flowstone.io_managers`` and ``flowstone.item_readers``; ``db`` in ``flowstone.cli``).
"""

from __future__ import annotations

from flowstone_io_postgres._version import __version__
from flowstone_io_postgres.io_manager import PostgresIOManager
from flowstone_io_postgres.reader import PostgresItemReader
from flowstone_io_postgres.store import PostgresRunStore

__all__ = ["PostgresIOManager", "PostgresItemReader", "PostgresRunStore", "__version__"]
