"""Seeds: scatter payload size limit, no unbounded interning of names from scatter and
parallel messages, and where the scatter coordinator finds its database (seed 001 sections 8
and 12, seed 000 section 6; DESIGN.md sections 6 and 8), on real workers and Postgres."""

from __future__ import annotations

import gc
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ScatterCluster, load_pipeline

pytestmark = pytest.mark.integration

SEED_SPEC = f"{Path(__file__).parent / 'pipelines' / 'seed_scatter.py'}:pipeline"


@pytest.fixture
def pipeline(cluster: ScatterCluster) -> Iterator[Any]:
    loaded = load_pipeline(cluster.queue, SEED_SPEC)
    yield loaded
    loaded.close()


def test_seed_scatter_item_payload_size_limit(cluster: ScatterCluster, pipeline: Any) -> None:
    """Seed 001 section 12: like keys, item payloads have a size limit, checked before
    anything is written; the error names the asset, the item, its size and the limit."""
    from flowstone_scatter.coordinator import MAX_ITEM_BYTES

    cluster.start("w1", spec=SEED_SPEC)
    result = pipeline.run("big_items", force=True, timeout=60)
    text = f"{result.error} " + " ".join(str(s.error) for s in result.steps)
    assert result.status == "failed", text
    assert "scatter item 1 of asset 'big_items' is" in text, text
    assert f"the limit is {MAX_ITEM_BYTES}" in text, text
    coord = pipeline.scatter_coordinator

    async def barriers(conn: Any) -> int:
        return int(await conn.fetchval(
            "SELECT count(*) FROM flowstone.scatter_barriers WHERE run_id = $1",
            result.run_id))

    assert coord.database(pipeline.runner).run(barriers) == 0  # nothing half-written


def _holders(marker: str) -> list[str]:
    """Describe every live container that holds a string containing ``marker``."""
    found = []
    for obj in gc.get_objects():
        if isinstance(obj, dict):
            values: Any = list(obj.keys()) + list(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            values = obj
        else:
            continue
        if any(isinstance(v, str) and marker in v for v in values):
            found.append(f"{type(obj).__name__} of {len(obj)}")
    return found


def test_seed_no_interning_of_names_from_scatter_and_parallel_messages(
    client_env: str, redis_url: str,
) -> None:
    """Seed 001 section 8 (an atom per name): thousands of scatter messages naming unknown
    pipelines or barriers, and step messages naming unknown branches of a parallel asset,
    leave no logger, no pipeline and no container holding those names behind."""
    import flowstone as fs
    from flowstone.loading import load_pipeline as load
    from flowstone_celery import load_settings, make_app
    from flowstone_scatter.messages import CHUNK_TASK, READ_TASK

    @fs.asset
    def maps() -> str:
        return "maps"

    @fs.asset
    def news() -> str:
        return "news"

    @fs.asset(parallel=fs.Parallel(branches={"maps": "maps", "news": "news"}))
    def enrich(branches: dict[str, str]) -> dict[str, str]:
        return branches

    app = make_app(load_settings(broker_url="memory://", queue=f"seed-{uuid.uuid4().hex[:8]}"))
    app.add_pipeline(load(SEED_SPEC))
    app.add_pipeline(fs.Pipeline("seed_parallel", [maps, news, enrich]))
    marker = f"zq{uuid.uuid4().hex[:10]}"
    try:
        chunk, read, step = app.tasks[CHUNK_TASK], app.tasks[READ_TASK], app.tasks[
            "flowstone.run_step"]
        loggers = set(logging.Logger.manager.loggerDict)
        pipelines = dict(app.pipelines)
        # the drops are logged; the test's log capture would keep those records (and names)
        logging.disable(logging.CRITICAL)
        for i in range(2000):
            name = f"{marker}_{i}"
            assert chunk({"v": 1, "p": name, "b": i, "u": [0, 1]}) == 0
            assert read({"v": 1, "p": name, "b": i}) == 0
            assert step({"v": 1, "run_id": f"r{i}", "pipeline": "seed_parallel",
                         "asset": f"enrich_{name}", "partition": "", "attempt": 0}) == 0
        for i in range(200):  # a known pipeline, barriers that do not exist
            assert chunk({"v": 1, "p": "scatter_seed", "b": 10**12 + i, "u": [0, 1]}) == 0
        gc.collect()
        assert set(logging.Logger.manager.loggerDict) == loggers
        assert dict(app.pipelines) == pipelines
        assert _holders(marker) == []
    finally:
        logging.disable(logging.NOTSET)
        app.close_pipelines()
        app.close()


def test_seed_scatter_database_fallback_order(
    database_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Seed 000 section 6 (the barrier lives where the run store is): the coordinator's
    database is, in order, ``database_url=``, else the pipeline's own Postgres run store,
    else ``FLOWSTONE_DATABASE_URL``; with none of them it says what to configure."""
    import flowstone as fs
    from flowstone.errors import UsageError
    from flowstone_scatter import CeleryScatterCoordinator

    @fs.asset
    def one() -> int:
        return 1

    # three spellings of the test database, told apart by how their URL is written
    with_port = database_url  # ...@127.0.0.1:5432/db (the pipeline's store)
    no_port = database_url.replace(":5432/", "/")  # ...@127.0.0.1/db
    env_url = with_port.replace("postgresql+asyncpg://", "postgresql://")
    assert with_port != no_port
    monkeypatch.setenv("FLOWSTONE_DATABASE_URL", env_url)

    def where(coordinator: CeleryScatterCoordinator, store: str) -> str:
        p = fs.Pipeline(f"seed_db_{uuid.uuid4().hex[:6]}", [one], store=store,
                        scatter_coordinator=coordinator)
        try:
            db = coordinator.database(p.runner)
            return repr(db.store) if db.store is not p.store else "the pipeline's store"
        finally:
            coordinator.close()
            p.close()

    explicit = where(CeleryScatterCoordinator(database_url=no_port), with_port)
    assert explicit == f"PostgresRunStore({no_port!r}, schema='flowstone')"
    assert where(CeleryScatterCoordinator(), with_port) == "the pipeline's store"
    from_env = where(CeleryScatterCoordinator(), "memory://")
    assert from_env == f"PostgresRunStore({with_port!r}, schema='flowstone')"  # normalised
    monkeypatch.delenv("FLOWSTONE_DATABASE_URL")
    with pytest.raises(UsageError, match="keeps its barrier in Postgres"):
        where(CeleryScatterCoordinator(), "memory://")
