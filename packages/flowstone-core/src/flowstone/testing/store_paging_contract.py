"""Contract tests for paging through runs: ``list_runs(after=)``, the keyset the sweeps
(``recover()``, ``expire_due()``) page with. A base of
:class:`~flowstone.testing.store_contract.RunStoreContract`, so every store's suite runs
them.

Why keyset and not ``offset``: a sweep changes the status of the runs it acts on, so the
runs it filters on leave the list while it pages through it; ``offset`` then skips as
many runs as left the pages already read. A page that starts after the last run seen, in
one stable order (``created_at``, then ``run_id``, newest first: the UI's order), does
not move when earlier runs leave.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from flowstone.errors import UsageError
from flowstone.protocols import RunStore
from flowstone.records import RunRecord, StepSpec
from flowstone.testing._store_helpers import DAY, _create, _now, _uid

__all__ = ["StorePagingContract"]


def _key(run: RunRecord) -> tuple[Any, str]:
    return run.created_at, run.run_id


class StorePagingContract:
    """``list_runs`` pages by keyset (``after=``) without skipping or repeating a run."""

    def _runs(self, store: RunStore, pipeline: str, n: int) -> list[RunRecord]:
        """``n`` running runs of ``pipeline``, two of them created at the same instant (the
        tie is broken by ``run_id``), returned in list order (newest first)."""
        base = _now() - timedelta(hours=1)
        at = [base + timedelta(minutes=i) for i in range(n - 1)] + [base]
        made = [
            _create(store, [StepSpec("trade", DAY)], pipeline=pipeline, created_at=t)[0] for t in at
        ]
        return sorted(made, key=_key, reverse=True)

    def test_list_runs_orders_ties_by_run_id(self, store: RunStore) -> None:
        pipeline = _uid("ordered")
        made = self._runs(store, pipeline, 4)
        listed = store.list_runs(pipeline=pipeline)
        assert [r.run_id for r in listed] == [r.run_id for r in made]

    def test_list_runs_pages_after_the_last_run_seen(self, store: RunStore) -> None:
        pipeline = _uid("keyset")
        made = self._runs(store, pipeline, 5)
        pages, after = [], None
        while True:
            page = store.list_runs(pipeline=pipeline, limit=2, after=after)
            pages.append([r.run_id for r in page])
            if len(page) < 2:
                break
            after = _key(page[-1])
        ids = [r.run_id for r in made]
        assert pages == [ids[:2], ids[2:4], ids[4:]]

    def test_a_run_leaving_the_filter_does_not_shift_the_next_page(self, store: RunStore) -> None:
        """What a sweep does: it finishes the runs of a page (they leave ``running``)
        before it asks for the next page."""
        pipeline = _uid("sweep")
        made = self._runs(store, pipeline, 5)
        seen: list[str] = []
        after = None
        while True:
            page = store.list_runs(pipeline=pipeline, status="running", limit=2, after=after)
            for run in page:
                seen.append(run.run_id)
                store.set_run_status(run.run_id, "succeeded")
            if len(page) < 2:
                break
            after = _key(page[-1])
        assert seen == [r.run_id for r in made]
        assert store.list_runs(pipeline=pipeline, status="running") == []

    @pytest.mark.parametrize(
        ("after", "offset", "match"),
        [
            ("run-1", 0, "after="),
            ((None, "run-1"), 0, "after="),
            ((_now(), 42), 0, "after="),
            ((_now().replace(tzinfo=None), "run-1"), 0, "timezone-aware"),
            ((_now(), "run-1"), 2, "not both"),
        ],
    )
    def test_list_runs_refuses_a_bad_keyset(
        self, store: RunStore, after: Any, offset: int, match: str
    ) -> None:
        with pytest.raises(UsageError, match=match):
            store.list_runs(pipeline=_uid("bad"), after=after, offset=offset)
