"""A Celery scatter whose run store uses a schema other than ``flowstone``: the barrier
tables must follow the store's schema (loaded by the test process and the workers)."""

from __future__ import annotations

import os

import flowstone as fs
from flowstone_io_postgres import PostgresRunStore

SCHEMA = "fs_it_scatter_alt"


@fs.asset
def sizes(context: fs.Context) -> list[int]:
    return list(range(int(str(context.partition))))


@fs.asset(scatter=fs.Scatter(items=lambda sizes: sizes, max_concurrent=8))
def cubes(context: fs.Context, sizes: list[int]) -> int:
    item: int = context.scatter_item
    return item**3


store = PostgresRunStore(os.environ["FLOWSTONE_DATABASE_URL"], schema=SCHEMA,
                         auto_migrate=True, pool_size=2, max_overflow=1)
pipeline = fs.Pipeline("scatter_schema", [sizes, cubes], store=store)
