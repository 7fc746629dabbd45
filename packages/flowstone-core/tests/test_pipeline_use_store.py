"""Pipeline.use_store: pipelines that share one store (issue 14 item 17)."""

from __future__ import annotations

from pathlib import Path

import pytest

import flowstone as fs
from flowstone.defaults.sqlite_store import SQLiteRunStore
from flowstone.errors import UsageError


class CountingStore(SQLiteRunStore):
    """A real SQLite store that counts how often it is closed."""

    closed = 0

    def close(self) -> None:
        self.closed += 1
        super().close()


@fs.asset
def answer() -> int:
    return 42


def test_a_shared_store_takes_the_runs_and_values_and_is_not_closed_by_its_user(
    tmp_path: Path,
) -> None:
    shared = CountingStore(tmp_path / "shared.db")
    pipeline = fs.Pipeline("user", [answer], store=f"sqlite:///{tmp_path / 'own.db'}")
    pipeline.use_store(shared, owned=False)
    result = pipeline.run("answer")
    assert result.value == 42
    assert [r.run_id for r in shared.list_runs(pipeline="user")] == [result.run_id]
    pipeline.close()
    assert shared.closed == 0  # whoever shares it closes it
    assert shared.get_run(result.run_id) is not None


def test_an_owned_store_is_closed_with_the_pipeline(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "runs.db")
    pipeline = fs.Pipeline("owner", [answer], store=f"sqlite:///{tmp_path / 'own.db'}")
    pipeline.use_store(store)
    pipeline.close()
    assert store.closed == 1


def test_use_store_refuses_what_is_not_a_store() -> None:
    pipeline = fs.Pipeline("p", [answer], store="memory://")
    with pytest.raises(UsageError, match="takes a RunStore, got str"):
        pipeline.use_store("sqlite:///x.db")  # type: ignore[arg-type]
