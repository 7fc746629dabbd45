"""Pipelines a worker serves from one store URL share one store (issue 14 item 17)."""

from __future__ import annotations

from pathlib import Path

import flowstone as fs
from flowstone_celery import FlowstoneCelery


@fs.asset
def answer() -> int:
    return 42


def test_pipelines_built_from_one_url_share_one_store(app: FlowstoneCelery, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    first, second = (fs.Pipeline(name, [answer], store=url) for name in ("first", "second"))
    other = fs.Pipeline("other", [answer], store=f"sqlite:///{tmp_path / 'other.db'}")
    for pipeline in (first, second, other):
        app.add_pipeline(pipeline)
    assert second.store is first.store
    assert second.runtime.store is first.store  # what the engine uses
    assert other.store is not first.store


def test_a_store_object_is_left_as_given(app: FlowstoneCelery) -> None:
    from flowstone.defaults.memory_store import MemoryRunStore

    store = MemoryRunStore()
    pipeline = fs.Pipeline("given", [answer], store=store)
    app.add_pipeline(pipeline)
    assert pipeline.store is store
