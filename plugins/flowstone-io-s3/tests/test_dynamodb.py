"""DynamoDBItemReader against moto's DynamoDB server: the core contract over a query, and a
parallel scan that resumes exactly from a checkpoint taken after any page."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from flowstone.errors import StorageError, UsageError
from flowstone.testing.reader_contract import ItemReaderContract
from flowstone_io_s3 import DynamoDBItemReader

from . import _objects


def _table(dynamodb: Any, name: str, items: Sequence[dict[str, Any]]) -> None:
    dynamodb.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    from boto3.dynamodb.types import TypeSerializer

    serialize = TypeSerializer().serialize
    for item in items:
        dynamodb.put_item(TableName=name, Item={k: serialize(v) for k, v in item.items()})


class TestDynamoDBQuery(ItemReaderContract):
    endpoint = ""
    client: Any = None

    @pytest.fixture(autouse=True)
    def _server(self, endpoint: str, dynamodb: Any) -> Iterator[None]:
        self.endpoint, self.client = endpoint, dynamodb
        self.made: set[str] = set()
        self.tag = uuid.uuid4().hex[:8]
        yield

    def sample_items(self) -> list[Any]:
        return [
            {"pk": "customer-1", "sk": Decimal(i), "name": f"n{i}", "tags": {"a", f"t{i}"}}
            for i in range(8)
        ]

    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> DynamoDBItemReader:
        plain = [{**i, "sk": int(i["sk"]), "tags": sorted(i["tags"])} for i in items]
        name = f"q-{self.tag}-{_objects.digest(plain)}"
        if name not in self.made:
            _table(self.client, name, items)
            self.made.add(name)
        return DynamoDBItemReader(
            name,
            key_condition="pk = :pk",
            expression_values={":pk": "customer-1"},
            page_limit=3,
            endpoint_url=self.endpoint,
        )


@pytest.fixture
def scanned(endpoint: str, dynamodb: Any) -> str:
    name = f"scan-{uuid.uuid4().hex[:8]}"
    _table(dynamodb, name, [{"pk": f"k{i % 7}", "sk": i, "v": "x" * i} for i in range(40)])
    return name


def _drain(reader: DynamoDBItemReader, page: int) -> list[Any]:
    out: list[Any] = []
    while items := reader.read(page):
        out.extend(items)
    return out


def test_parallel_scan_reads_every_item_once_and_resumes_anywhere(
    endpoint: str, scanned: str
) -> None:
    definition = DynamoDBItemReader(scanned, segments=3, page_limit=4, endpoint_url=endpoint)
    first = copy.copy(definition)
    first.init({})
    checkpoints = [json.loads(json.dumps(first.checkpoint()))]
    pages: list[list[Any]] = []
    while page := first.read(5):
        pages.append(page)
        checkpoints.append(json.loads(json.dumps(first.checkpoint())))
    first.close()
    everything = [item for page in pages for item in page]
    assert sorted(int(i["sk"]) for i in everything) == list(range(40))
    for done, checkpoint in enumerate(checkpoints):
        resumed = copy.copy(definition)
        resumed.init({})
        resumed.restore(checkpoint)
        seen = [item for page in pages[:done] for item in page]
        assert seen + _drain(resumed, 7) == everything, f"resumed after page {done}"
        resumed.close()


def test_raw_items_and_filters(endpoint: str, scanned: str) -> None:
    reader = DynamoDBItemReader(
        scanned,
        filter_expression="sk < :top",
        expression_values={":top": 5},
        deserialize=False,
        endpoint_url=endpoint,
    )
    reader.init({})
    items = _drain(reader, 100)
    reader.close()
    assert sorted(int(i["sk"]["N"]) for i in items) == [0, 1, 2, 3, 4]


def test_missing_table_and_bad_arguments(endpoint: str) -> None:
    reader = DynamoDBItemReader("no-such-table", endpoint_url=endpoint)
    reader.init({})
    with pytest.raises(StorageError, match="dynamodb table 'no-such-table' does not exist"):
        reader.read(1)
    reader.close()
    with pytest.raises(UsageError, match="segments"):
        DynamoDBItemReader("t", segments=0)
    with pytest.raises(UsageError, match="segments apply to scans"):
        DynamoDBItemReader("t", key_condition="pk = :pk", segments=2)
    with pytest.raises(UsageError, match="not a checkpoint"):
        fresh = DynamoDBItemReader("t", segments=2, endpoint_url=endpoint)
        fresh.init({})
        fresh.restore({"turn": 0, "segments": [{"start": None, "skip": 0, "done": False}]})
