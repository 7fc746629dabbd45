"""Rows of one Parquet object, a row group at a time."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from flowstone.errors import StorageError
from flowstone_io_s3._ranges import RangedFile

__all__ = ["ParquetParser"]


class ParquetParser:
    """Rows of a Parquet object as dicts, a row group at a time.

    The next row group is fetched and decoded in a background thread while the rows of
    the current one are handed out (Arrow decodes without the interpreter lock), so
    network, decoding and the conversion to Python overlap; memory holds at most two row
    groups, whatever the object size.
    """

    __slots__ = (
        "_error", "_file", "_group", "_groups", "_next", "_pf", "_pool", "_ref", "_row", "_rows",
    )  # fmt: skip

    def __init__(self, file: RangedFile, position: dict[str, Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._ref = file.ref
        self._file = file
        try:
            self._pf = pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as exc:
            raise StorageError(
                f"{self._ref.uri} is not a readable Parquet file (footer at byte "
                f"{max(0, self._ref.size - 8)}): {' '.join(str(exc).split())}. Fix: check the "
                "object, or set format=."
            ) from exc
        self._groups = self._pf.metadata.num_row_groups
        self._group = int(position.get("row_group", 0))
        self._row = int(position.get("row", 0))
        self._rows: list[dict[str, Any]] | None = None
        self._error: StorageError | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._next: tuple[int, Future[Any]] | None = None

    def num_rows(self) -> int:
        return int(self._pf.metadata.num_rows)

    def position(self) -> dict[str, Any]:
        return {"row_group": self._group, "row": self._row}

    def close(self) -> None:
        self._rows = None
        if self._next is not None:
            self._next[1].cancel()
            self._next = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._file.close()

    def _load(self) -> list[dict[str, Any]]:
        import pyarrow as pa

        try:
            if self._next is not None and self._next[0] == self._group:
                table = self._next[1].result()
            else:
                table = self._pf.read_row_group(self._group)
            self._next = None
            if self._group + 1 < self._groups:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="flowstone-parquet")
                following = self._group + 1
                self._next = (following, self._pool.submit(self._pf.read_row_group, following))
            rows: list[dict[str, Any]] = table.to_pylist()
        except (pa.ArrowException, OSError) as exc:
            column = self._pf.metadata.row_group(self._group).column(0)
            start = (
                column.dictionary_page_offset
                if column.has_dictionary_page
                else column.data_page_offset
            )
            raise StorageError(
                f"{self._ref.uri}, row group {self._group} (byte {start}): "
                f"cannot read it: {' '.join(str(exc).split())}. Fix: check the object; it may "
                "be truncated or corrupt."
            ) from exc
        return rows

    def read(self, max_items: int) -> list[Any]:
        if self._error is not None:
            raise self._error
        page: list[Any] = []
        while len(page) < max_items and self._group < self._groups:
            if self._rows is None:
                try:
                    self._rows = self._load()
                except StorageError as exc:
                    self._error = exc  # from now on every read raises it, at this position
                    if page:
                        return page
                    raise
            take = self._rows[self._row : self._row + max_items - len(page)]
            page.extend(take)
            self._row += len(take)
            if self._row >= len(self._rows):
                self._group, self._row, self._rows = self._group + 1, 0, None
        return page
