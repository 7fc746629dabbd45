"""One sweep reaches every run it should on Postgres, however many pages they span
(:mod:`flowstone.testing.sweep_contract`): the sweeps page through runs with
``list_runs(after=)``, in the order of the ``runs_ui_status_idx`` index. Values are
staged into the steps' own ``finish_step`` (PostgresIOManager on the same database)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import flowstone as fs
from flowstone.testing.sweep_contract import SweepContract
from flowstone_io_postgres import PostgresIOManager, PostgresRunStore

pytestmark = pytest.mark.integration


class TestPostgresSweepPaging(SweepContract):
    @pytest.fixture
    def sweep_pipeline(self, migrated_url: str) -> Iterator[Callable[..., fs.Pipeline]]:
        store = PostgresRunStore(migrated_url, pool_size=2, max_overflow=1)
        io = PostgresIOManager(migrated_url, pool_size=2)
        built: list[fs.Pipeline] = []

        def make(assets: list[fs.AssetDef], **kwargs: Any) -> fs.Pipeline:
            name = f"sweep_{uuid.uuid4().hex[:8]}"
            p = fs.Pipeline(name, assets, store=store, io_managers={"default": io}, **kwargs)
            built.append(p)
            return p

        yield make
        for p in built:
            p.close()
        io.close()
        store.close()
