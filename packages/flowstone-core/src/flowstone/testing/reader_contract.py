"""The behaviour every :class:`~flowstone.protocols.ItemReader` must have.

Subclass :class:`ItemReaderContract` in a pytest module (name it ``Test...``), implement
:meth:`~ItemReaderContract.make_reader` and :meth:`~ItemReaderContract.sample_items`, and
pytest runs every contract test against your reader::

    from flowstone import readers
    from flowstone.testing.reader_contract import ItemReaderContract

    class TestJsonLinesReader(ItemReaderContract):
        def sample_items(self):
            return [{"id": i} for i in range(7)]

        def make_reader(self, items, tmp_path):
            path = tmp_path / "items.jsonl"
            path.write_text("".join(json.dumps(item) + "\\n" for item in items))
            return readers.JsonLines(path)

The suite imports nothing from pytest (the core is stdlib only); it only asks pytest for
the built-in ``tmp_path`` fixture.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flowstone.protocols import ItemReader

__all__ = ["ItemReaderContract"]


class ItemReaderContract:
    """Contract tests for an item reader; subclass it and implement the two hooks.

    The suite checks: paging with any page size returns exactly the items in order; a
    checkpoint taken after any page, passed through JSON and restored on a fresh reader,
    continues without skipping or repeating an item (every split point is tried); empty
    input; ``read`` keeps returning ``[]`` at the end; ``count`` is None or exact;
    ``close`` is idempotent; and a reader object can be used for a second run after
    ``close``, and copies of one reader (:func:`copy.copy`) serve overlapping runs
    independently (the coordinator relies on both).
    """

    def sample_items(self) -> list[Any]:
        """Return about 5-10 distinct items in exactly the form the reader yields them."""
        raise NotImplementedError("ItemReaderContract subclasses implement sample_items()")

    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> ItemReader:
        """Return a new, un-initialised reader whose items are exactly ``items``, in order.

        Called several times per test, sometimes with the same ``items``; each call must
        give a reader over the same data (write files under ``tmp_path``).
        """
        raise NotImplementedError("ItemReaderContract subclasses implement make_reader()")

    def reader_deps(self) -> Mapping[str, Any]:
        """The dependency values passed to ``init``; override if the reader needs some."""
        return {}

    # --- helpers ---------------------------------------------------------------------

    def _opened(self, items: Sequence[Any], tmp_path: Path) -> ItemReader:
        reader = self.make_reader(items, tmp_path)
        reader.init(self.reader_deps())
        return reader

    @staticmethod
    def _drain(reader: ItemReader, page_size: int) -> list[Any]:
        items: list[Any] = []
        # A bound on the loop so a reader that never ends fails instead of hanging.
        for _ in range(10_000):
            page = reader.read(page_size)
            assert len(page) <= page_size, f"read({page_size}) returned {len(page)} items"
            if not page:
                return items
            items.extend(page)
        raise AssertionError("the reader never returned an empty page")

    @staticmethod
    def _through_json(checkpoint: dict[str, Any]) -> dict[str, Any]:
        assert isinstance(checkpoint, dict), f"checkpoint() returned {type(checkpoint)}"
        loaded: dict[str, Any] = json.loads(json.dumps(checkpoint))
        return loaded

    # --- the contract ----------------------------------------------------------------

    def test_reads_every_item_in_order_whatever_the_page_size(self, tmp_path: Path) -> None:
        items = self.sample_items()
        for page_size in sorted({1, 2, 3, len(items), len(items) + 5}):
            reader = self._opened(items, tmp_path)
            try:
                assert self._drain(reader, page_size) == items, f"page size {page_size}"
            finally:
                reader.close()

    def test_restore_continues_exactly_after_each_split_point(self, tmp_path: Path) -> None:
        items = self.sample_items()
        for split in range(len(items) + 1):
            first = self._opened(items, tmp_path)
            try:
                head = first.read(split) if split else []
                checkpoint = self._through_json(first.checkpoint())
            finally:
                first.close()
            assert head == items[:split]
            second = self._opened(items, tmp_path)
            try:
                second.restore(checkpoint)
                assert self._drain(second, 2) == items[split:], f"resumed after {split} items"
            finally:
                second.close()

    def test_checkpoint_after_every_page_resumes_without_gaps(self, tmp_path: Path) -> None:
        items = self.sample_items()
        reader = self._opened(items, tmp_path)
        checkpoints = [self._through_json(reader.checkpoint())]
        pages: list[list[Any]] = []
        try:
            while page := reader.read(3):
                pages.append(page)
                checkpoints.append(self._through_json(reader.checkpoint()))
        finally:
            reader.close()
        for done, checkpoint in enumerate(checkpoints):
            resumed = self._opened(items, tmp_path)
            try:
                resumed.restore(checkpoint)
                seen = [item for page in pages[:done] for item in page]
                assert seen + self._drain(resumed, 3) == items, f"resumed after page {done}"
            finally:
                resumed.close()

    def test_restore_then_checkpoint_gives_the_same_position(self, tmp_path: Path) -> None:
        items = self.sample_items()
        first = self._opened(items, tmp_path)
        try:
            first.read(2)
            checkpoint = self._through_json(first.checkpoint())
        finally:
            first.close()
        second = self._opened(items, tmp_path)
        try:
            second.restore(checkpoint)
            again = self._through_json(second.checkpoint())
        finally:
            second.close()
        third = self._opened(items, tmp_path)
        try:
            third.restore(again)
            assert self._drain(third, 4) == items[2:]
        finally:
            third.close()

    def test_empty_input_reads_nothing(self, tmp_path: Path) -> None:
        reader = self._opened([], tmp_path)
        try:
            assert reader.read(5) == []
            assert reader.count() in (None, 0)
            checkpoint = self._through_json(reader.checkpoint())
        finally:
            reader.close()
        resumed = self._opened([], tmp_path)
        try:
            resumed.restore(checkpoint)
            assert resumed.read(5) == []
        finally:
            resumed.close()

    def test_read_keeps_returning_empty_after_the_end(self, tmp_path: Path) -> None:
        items = self.sample_items()
        reader = self._opened(items, tmp_path)
        try:
            assert reader.read(len(items) + 1) == items
            assert reader.read(1) == []
            assert reader.read(10) == []
        finally:
            reader.close()

    def test_count_is_none_or_exact(self, tmp_path: Path) -> None:
        items = self.sample_items()
        reader = self._opened(items, tmp_path)
        try:
            assert reader.count() in (None, len(items))
        finally:
            reader.close()

    def test_close_is_idempotent(self, tmp_path: Path) -> None:
        items = self.sample_items()
        untouched = self._opened(items, tmp_path)
        untouched.close()
        untouched.close()
        partly_read = self._opened(items, tmp_path)
        partly_read.read(1)
        partly_read.close()
        partly_read.close()

    def test_a_reader_serves_a_second_run_after_close(self, tmp_path: Path) -> None:
        items = self.sample_items()
        reader = self.make_reader(items, tmp_path)
        for run in range(2):
            reader.init(self.reader_deps())
            try:
                assert self._drain(reader, 3) == items, f"run {run + 1}"
            finally:
                reader.close()

    def test_copies_of_one_definition_run_independently(self, tmp_path: Path) -> None:
        items = self.sample_items()
        definition = self.make_reader(items, tmp_path)
        first, second = copy.copy(definition), copy.copy(definition)
        first.init(self.reader_deps())
        try:
            head = first.read(1)
            second.init(self.reader_deps())
            try:
                assert self._drain(second, 2) == items
            finally:
                second.close()
            assert head + self._drain(first, 2) == items
        finally:
            first.close()
