"""DynamoDBItemReader: scatter items from a DynamoDB query or (parallel) scan."""

from __future__ import annotations

import base64
import collections.abc as cabc
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from flowstone.errors import UsageError
from flowstone_io_s3.connection import Connection, service_error

__all__ = ["DynamoDBItemReader"]


class DynamoDBItemReader:
    """Streams the items of a DynamoDB query or scan, one 1 MB response page at a time.

    With ``key_condition`` it runs a Query (items in key order, ``index_name`` for a
    secondary index); without, a Scan split into ``segments`` parallel segments. Scan
    segments are read concurrently, one page ahead each, and their pages are handed out in
    turn (segment 0's first page, segment 1's first page, ...): memory stays at one page per
    segment.

    The checkpoint holds, per segment, the ``ExclusiveStartKey`` of the page being read
    (DynamoDB's ``LastEvaluatedKey`` of the page before), how many items of that page were
    returned, and whether the segment is done; restoring re-reads that one page and
    continues after the last item returned.

    Args:
        table: the table name.
        key_condition: a ``KeyConditionExpression``; given, the reader queries.
        filter_expression: a ``FilterExpression``.
        expression_values: ``ExpressionAttributeValues`` as plain Python values
            (``{":pk": "customer-1"}``; numbers as int or Decimal).
        expression_names: ``ExpressionAttributeNames``.
        index_name: a secondary index to query or scan.
        projection: a ``ProjectionExpression``.
        segments: parallel scan segments (1-64; scans only).
        consistent_read: strongly consistent reads.
        page_limit: ``Limit`` per request (None: DynamoDB's 1 MB pages).
        deserialize: items as plain Python (numbers as Decimal); False gives DynamoDB JSON.
        endpoint_url, region_name, client, session: as for ``S3IOManager``.

    Example::

        fs.Scatter(reader=DynamoDBItemReader("orders", segments=4))
    """

    def __init__(
        self,
        table: str,
        *,
        key_condition: str | None = None,
        filter_expression: str | None = None,
        expression_values: cabc.Mapping[str, Any] | None = None,
        expression_names: cabc.Mapping[str, str] | None = None,
        index_name: str | None = None,
        projection: str | None = None,
        segments: int = 1,
        consistent_read: bool = False,
        page_limit: int | None = None,
        deserialize: bool = True,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        client: Any = None,
        session: Any = None,
    ) -> None:
        self._args = dict(locals())
        del self._args["self"]
        if not isinstance(table, str) or not table:
            raise UsageError(f"DynamoDBItemReader: table must be a table name, got {table!r}.")
        if isinstance(segments, bool) or not isinstance(segments, int) or not 1 <= segments <= 64:
            raise UsageError(
                f"DynamoDBItemReader: segments must be an int in 1..64, got {segments!r}."
            )
        if key_condition is not None and segments != 1:
            raise UsageError("DynamoDBItemReader: segments apply to scans; a query has one.")
        if page_limit is not None and (
            isinstance(page_limit, bool) or not isinstance(page_limit, int) or page_limit < 1
        ):
            raise UsageError("DynamoDBItemReader: page_limit must be an int >= 1 or None.")
        self._table = table
        self._connection = Connection("dynamodb", endpoint_url, region_name, client, session)
        self._request = self._base_request()
        self._operation = "Query" if key_condition is not None else "Scan"
        self._segments: list[_Segment] | None = None
        self._turn = 0
        self._pool: ThreadPoolExecutor | None = None

    def __copy__(self) -> DynamoDBItemReader:
        # A fresh, un-initialised reader with the same configuration (of a subclass too).
        return type(self)(**self._args)

    def __repr__(self) -> str:
        return f"DynamoDBItemReader({self._table!r}, {self._operation.lower()})"

    def _base_request(self) -> dict[str, Any]:
        a = self._args
        request: dict[str, Any] = {"TableName": self._table}
        if a["key_condition"] is not None:
            request["KeyConditionExpression"] = a["key_condition"]
        if a["filter_expression"] is not None:
            request["FilterExpression"] = a["filter_expression"]
        if a["expression_values"]:
            from boto3.dynamodb.types import TypeSerializer

            serializer = TypeSerializer()
            try:
                request["ExpressionAttributeValues"] = {
                    k: serializer.serialize(v) for k, v in a["expression_values"].items()
                }
            except TypeError as exc:
                raise UsageError(
                    f"DynamoDBItemReader: expression_values: {exc}. Fix: use int or Decimal "
                    "for numbers, str, bytes, bool, None, lists, dicts or sets."
                ) from exc
        if a["expression_names"]:
            request["ExpressionAttributeNames"] = dict(a["expression_names"])
        if a["index_name"] is not None:
            request["IndexName"] = a["index_name"]
        if a["projection"] is not None:
            request["ProjectionExpression"] = a["projection"]
        if a["consistent_read"]:
            request["ConsistentRead"] = True
        if a["page_limit"] is not None:
            request["Limit"] = a["page_limit"]
        return request

    # --- the ItemReader protocol -----------------------------------------------------------
    def init(self, deps: cabc.Mapping[str, Any]) -> None:
        """Start at the first item (nothing is requested until the first read)."""
        self.close()
        count = self._args["segments"]
        self._pool = ThreadPoolExecutor(count, thread_name_prefix="flowstone-dynamodb")
        self._segments = [_Segment(n, None, 0, False) for n in range(count)]
        self._turn = 0

    def read(self, max_items: int) -> list[Any]:
        """Return up to ``max_items`` next items; an empty list once every segment is done."""
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise UsageError(f"read(max_items={max_items!r}): max_items must be an int >= 1.")
        segments = self._require()
        for segment in segments:  # every segment one page ahead
            self._prefetch(segment)
        page: list[Any] = []
        while len(page) < max_items:
            live = [s for s in segments if not s.done]
            if not live:
                break
            segment = segments[self._turn]
            if segment.done:
                self._turn = (self._turn + 1) % len(segments)
                continue
            items = self._items(segment)
            take = items[segment.skip : segment.skip + max_items - len(page)]
            page.extend(self._convert(take))
            segment.skip += len(take)
            if segment.skip >= len(items):
                self._next_page(segment)
                self._turn = (self._turn + 1) % len(segments)
        return page

    def count(self) -> int | None:
        """Always None: counting would mean reading the table."""
        self._require()
        return None

    def checkpoint(self) -> dict[str, Any]:
        """``{"turn", "segments": [{"start", "skip", "done"}, ...]}``."""
        segments = self._require()
        return {
            "turn": self._turn,
            "segments": [
                {"start": _key_to_json(s.start), "skip": s.skip, "done": s.done} for s in segments
            ],
        }

    def restore(self, checkpoint: cabc.Mapping[str, Any]) -> None:
        """Continue right after the last item of the run that took ``checkpoint``."""
        segments = self._require()
        try:
            saved = checkpoint["segments"]
            turn = checkpoint["turn"]
            restored = [
                _Segment(n, _key_from_json(s["start"]), int(s["skip"]), bool(s["done"]))
                for n, s in enumerate(saved)
            ]
            if (
                len(restored) != len(segments)
                or not isinstance(turn, int)
                or not (0 <= turn < len(segments))
            ):
                raise ValueError("segment count differs")
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(
                f"DynamoDBItemReader.restore({checkpoint!r}): not a checkpoint of this reader "
                f"with {len(segments)} segment(s) ({exc}). Fix: pass a dict returned by "
                "checkpoint() of a reader configured the same way."
            ) from exc
        for segment in segments:
            segment.cancel()
        self._segments = restored
        self._turn = turn

    def close(self) -> None:
        """Drop this run's state. Idempotent."""
        for segment in self._segments or ():
            segment.cancel()
        self._segments = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # --- helpers ---------------------------------------------------------------------------
    def _require(self) -> list[_Segment]:
        if self._segments is None:
            raise UsageError("DynamoDBItemReader is not initialised. Fix: call init(deps) first.")
        return self._segments

    def _prefetch(self, segment: _Segment) -> None:
        if segment.done or segment.pending is not None or segment.page is not None:
            return
        assert self._pool is not None
        segment.pending = self._pool.submit(self._fetch, segment.number, segment.start)

    def _items(self, segment: _Segment) -> list[dict[str, Any]]:
        if segment.page is None:
            self._prefetch(segment)
            assert segment.pending is not None
            segment.page, segment.pending = segment.pending.result(), None
        items: list[dict[str, Any]] = segment.page.get("Items", [])
        return items

    def _next_page(self, segment: _Segment) -> None:
        assert segment.page is not None
        last = segment.page.get("LastEvaluatedKey")
        segment.page = None
        segment.skip = 0
        if last:
            segment.start = last
            self._prefetch(segment)
        else:
            segment.done = True

    def _fetch(self, number: int, start: dict[str, Any] | None) -> dict[str, Any]:
        request = dict(self._request)
        if self._operation == "Scan" and self._args["segments"] > 1:
            request["Segment"] = number
            request["TotalSegments"] = self._args["segments"]
        if start:
            request["ExclusiveStartKey"] = start
        client = self._connection.get()
        call = client.query if self._operation == "Query" else client.scan
        try:
            page: dict[str, Any] = call(**request)
        except Exception as exc:
            raise service_error(
                exc, operation=self._operation, target=f"dynamodb table {self._table!r}",
                connection=self._connection,
            ) from exc  # fmt: skip
        return page

    def _convert(self, items: list[dict[str, Any]]) -> list[Any]:
        if not self._args["deserialize"]:
            return items
        from boto3.dynamodb.types import TypeDeserializer

        deserialize = TypeDeserializer().deserialize
        return [{k: deserialize(v) for k, v in item.items()} for item in items]


class _Segment:
    """One scan segment's position: the page being read (by its start key) and how far."""

    __slots__ = ("done", "number", "page", "pending", "skip", "start")

    def __init__(self, number: int, start: dict[str, Any] | None, skip: int, done: bool) -> None:
        self.number = number
        self.start = start
        self.skip = skip
        self.done = done
        self.page: dict[str, Any] | None = None
        self.pending: Future[dict[str, Any]] | None = None

    def cancel(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
        self.pending = None
        self.page = None


def _key_to_json(key: dict[str, Any] | None) -> Any:
    """A LastEvaluatedKey as JSON: binary key attributes become ``{"B64": "..."}``."""
    if key is None:
        return None
    out: dict[str, Any] = {}
    for name, typed in key.items():
        ((kind, value),) = typed.items()
        if kind == "B":
            out[name] = {"B64": base64.b64encode(bytes(value)).decode("ascii")}
        else:
            out[name] = {kind: value}
    return out


def _key_from_json(key: Any) -> dict[str, Any] | None:
    if key is None:
        return None
    if not isinstance(key, dict):
        raise TypeError(f"start key must be an object, got {key!r}")
    out: dict[str, Any] = {}
    for name, typed in key.items():
        if not isinstance(typed, dict) or len(typed) != 1:
            raise TypeError(f"start key attribute {name!r} is malformed: {typed!r}")
        ((kind, value),) = typed.items()
        if kind == "B64":
            out[name] = {"B": base64.b64decode(value)}
        elif kind in ("S", "N"):
            out[name] = {kind: str(value)}
        else:
            raise TypeError(f"start key attribute {name!r} has type {kind!r}")
    return out
