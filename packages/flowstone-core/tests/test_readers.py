"""The built-in item readers: the ItemReader contract plus format-specific behaviour."""

from __future__ import annotations

import copy
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from flowstone import readers
from flowstone.errors import StorageError, UsageError
from flowstone.protocols import ItemReader
from flowstone.testing.reader_contract import ItemReaderContract


def write_jsonl(path: Path, items: Sequence[Any]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


def write_csv(path: Path, rows: Sequence[dict[str, str]], fieldnames: Sequence[str]) -> Path:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames))
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(buffer.getvalue().encode("utf-8"))
    return path


def read_all(reader: ItemReader, page_size: int = 3) -> list[Any]:
    items: list[Any] = []
    while page := reader.read(page_size):
        items.extend(page)
    return items


# --- the contract, for each built-in reader ------------------------------------------


class TestIterableContract(ItemReaderContract):
    def sample_items(self) -> list[Any]:
        return [{"n": i} for i in range(7)]

    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> ItemReader:
        return readers.Iterable(list(items))


class TestIterableFromDepsContract(ItemReaderContract):
    def sample_items(self) -> list[Any]:
        return ["a", "b", "c", "d", "e", "f"]

    def reader_deps(self) -> dict[str, Any]:
        return {"letters": "abcdef"}

    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> ItemReader:
        # A generator per run: not sized, and only re-iterable by calling the function again.
        expected = list(items)
        return readers.Iterable(lambda deps: (x for x in deps["letters"] if x in expected))


class TestJsonLinesContract(ItemReaderContract):
    def sample_items(self) -> list[Any]:
        return [{"id": 1}, [1, 2], "text", 3.5, None, {"nested": {"é": "ü"}}, True]

    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> ItemReader:
        return readers.JsonLines(write_jsonl(tmp_path / "items.jsonl", items))


class TestCsvContract(ItemReaderContract):
    def sample_items(self) -> list[Any]:
        return [
            {"id": "1", "text": "plain"},
            {"id": "2", "text": "two\nlines"},
            {"id": "3", "text": 'quoted "word", comma'},
            {"id": "4", "text": "crlf\r\ninside"},
            {"id": "5", "text": "ünïcödé ✓"},
            {"id": "6", "text": ""},
            {"id": "7", "text": "\n\n"},
        ]

    def make_reader(self, items: Sequence[Any], tmp_path: Path) -> ItemReader:
        return readers.Csv(write_csv(tmp_path / "items.csv", items, ["id", "text"]))


# --- Iterable ----------------------------------------------------------------------


def test_iterable_counts_sized_items_only() -> None:
    sized = readers.Iterable(range(4))
    sized.init({})
    assert sized.count() == 4
    unsized = readers.Iterable(lambda deps: iter([1, 2]))
    unsized.init({})
    assert unsized.count() is None


def test_iterable_one_shot_iterator_cannot_serve_a_second_run() -> None:
    reader = readers.Iterable(x for x in [1, 2, 3])
    reader.init({})
    assert read_all(reader) == [1, 2, 3]
    reader.close()
    with pytest.raises(UsageError, match="one-shot iterator"):
        copy.copy(reader).init({})


def test_iterable_rejects_a_non_iterable_and_a_bad_callable_result() -> None:
    with pytest.raises(UsageError, match="must be an iterable"):
        readers.Iterable(42)  # type: ignore[arg-type]
    reader = readers.Iterable(lambda deps: 42)  # type: ignore[arg-type,return-value]
    with pytest.raises(UsageError, match="returned int"):
        reader.init({})


def test_reading_before_init_or_with_a_bad_page_size_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="init"):
        readers.Iterable([1]).read(1)
    with pytest.raises(UsageError, match="init"):
        readers.JsonLines(tmp_path / "x.jsonl").read(1)
    reader = readers.Iterable([1])
    reader.init({})
    with pytest.raises(UsageError, match="max_items"):
        reader.read(0)


def test_restore_rejects_a_foreign_checkpoint(tmp_path: Path) -> None:
    reader = readers.JsonLines(write_jsonl(tmp_path / "a.jsonl", [1]))
    reader.init({})
    with pytest.raises(UsageError, match="'offset'"):
        reader.restore({"consumed": 3})
    reader.close()


# --- JsonLines ---------------------------------------------------------------------


def test_jsonl_path_comes_from_the_dependency_values(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "upstream.jsonl", [{"a": 1}, {"a": 2}])
    reader = readers.JsonLines(lambda deps: deps["export"]["path"])
    reader.init({"export": {"path": str(path)}})
    assert read_all(reader) == [{"a": 1}, {"a": 2}]
    reader.close()


def test_jsonl_malformed_line_names_file_line_and_json_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"ok": 1}\n{"ok": 2}\n{"ok": \n{"ok": 4}\n', encoding="utf-8")
    reader = readers.JsonLines(path)
    reader.init({})
    assert reader.read(1) == [{"ok": 1}]
    # The good part of the page comes back; the reader stops at the last good record.
    assert reader.read(10) == [{"ok": 2}]
    assert reader.checkpoint() == {"offset": len('{"ok": 1}\n{"ok": 2}\n'), "line": 2}
    with pytest.raises(StorageError) as caught:
        reader.read(10)
    message = str(caught.value)
    assert str(path) in message
    assert "line 3" in message
    assert "Expecting value" in message
    assert isinstance(caught.value.__cause__, json.JSONDecodeError)
    # Nothing is skipped: the bad line is still next, and fails again.
    assert reader.checkpoint() == {"offset": len('{"ok": 1}\n{"ok": 2}\n'), "line": 2}
    with pytest.raises(StorageError, match="line 3"):
        reader.read(1)
    reader.close()


@pytest.mark.parametrize(
    ("bad_line", "cause", "fragment"),
    [
        ("1" * 5000, ValueError, "ValueError"),  # beyond int()'s default digit limit
        ("[" * 200_000 + "]" * 200_000, RecursionError, "nested too deeply"),
    ],
)
def test_jsonl_any_per_record_error_names_the_line_and_keeps_the_position(
    tmp_path: Path, bad_line: str, cause: type[BaseException], fragment: str
) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_text(f'{{"ok": 1}}\n{{"ok": 2}}\n{bad_line}\n{{"ok": 4}}\n', encoding="utf-8")
    good_end = {"offset": len('{"ok": 1}\n{"ok": 2}\n'), "line": 2}
    reader = readers.JsonLines(path)
    reader.init({})
    assert reader.read(10) == [{"ok": 1}, {"ok": 2}]
    assert reader.checkpoint() == good_end
    for _ in range(2):  # the bad record is never stepped over
        with pytest.raises(StorageError, match=rf"odd\.jsonl, line 3: .*{fragment}") as caught:
            reader.read(10)
        assert isinstance(caught.value.__cause__, cause)
        assert reader.checkpoint() == good_end
    reader.close()


def test_jsonl_blank_lines_are_skipped_or_rejected(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text("1\n\n   \n2\n", encoding="utf-8")
    lenient = readers.JsonLines(path)
    lenient.init({})
    assert read_all(lenient) == [1, 2]
    lenient.close()
    strict = readers.JsonLines(path, skip_blank=False)
    strict.init({})
    with pytest.raises(StorageError, match="line 2: blank line"):
        read_all(strict)
    strict.close()


def test_jsonl_undecodable_bytes_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes('"a"\n"caf\u00e9"\n'.encode("latin-1"))
    reader = readers.JsonLines(path)
    reader.init({})
    with pytest.raises(StorageError, match=r"line 2: cannot decode as utf-8"):
        read_all(reader)
    reader.close()
    latin = readers.JsonLines(path, encoding="latin-1")
    latin.init({})
    assert read_all(latin) == ["a", "café"]
    latin.close()


def test_jsonl_missing_file_is_a_storage_error_naming_the_path(tmp_path: Path) -> None:
    reader = readers.JsonLines(tmp_path / "nope.jsonl")
    with pytest.raises(StorageError, match=r"cannot open .*nope\.jsonl"):
        reader.init({})


def test_file_readers_refuse_encodings_without_single_byte_newlines() -> None:
    with pytest.raises(UsageError, match="not ASCII-compatible"):
        readers.JsonLines("x.jsonl", encoding="utf-16")
    with pytest.raises(UsageError, match="unknown encoding"):
        readers.Csv("x.csv", encoding="no-such-codec")


def test_jsonl_large_file_reads_in_pages_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as out:
        for i in range(100_000):
            out.write(f'{{"i": {i}}}\n')
    reader = readers.JsonLines(path)
    reader.init({})
    total = count = 0
    checkpoint: dict[str, Any] = {}
    while page := reader.read(1000):
        count += len(page)
        total += sum(item["i"] for item in page)
        if count == 50_000:
            checkpoint = reader.checkpoint()
    reader.close()
    assert count == 100_000
    assert total == sum(range(100_000))
    resumed = readers.JsonLines(path)
    resumed.init({})
    resumed.restore(checkpoint)
    assert resumed.read(1) == [{"i": 50_000}]
    resumed.close()


def test_utf8_bom_is_not_part_of_the_first_item(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"a": 1}\n')
    reader = readers.JsonLines(path)
    reader.init({})
    assert reader.read(5) == [{"a": 1}]
    reader.close()


# --- Csv ---------------------------------------------------------------------------


def assert_every_checkpoint_resumes(path: Path, expected: list[dict[str, str]]) -> None:
    """A checkpoint after any number of rows, through JSON, resumes a fresh reader exactly."""
    for split in range(len(expected) + 1):
        first = readers.Csv(path)
        first.init({})
        head = first.read(split) if split else []
        checkpoint = json.loads(json.dumps(first.checkpoint()))
        first.close()
        second = readers.Csv(path)
        second.init({})
        second.restore(checkpoint)
        assert head + read_all(second, 1) == expected
        second.close()


def test_csv_embedded_newlines_quotes_and_unicode_survive_every_resume(tmp_path: Path) -> None:
    path = tmp_path / "tricky.csv"
    path.write_bytes(
        'name,note\r\n"Zoë","said ""hi"",\r\nthen left"\r\n\r\nplain,"multi\n\nline"\r\n'
        "日本,✓\r\n".encode()
    )
    expected = [
        {"name": "Zoë", "note": 'said "hi",\r\nthen left'},
        {"name": "plain", "note": "multi\n\nline"},
        {"name": "日本", "note": "✓"},
    ]
    assert_every_checkpoint_resumes(path, expected)


@pytest.mark.parametrize(
    "raw",
    [
        b"a,b\r1,2\r3,4\r",  # classic Mac / Excel "CSV (Macintosh)"
        b"a,b\r\n1,2\n3,4\r5,6",  # mixed endings, no final newline
        b'a,b\r1,"x\ry"\r\n2,"p\r\nq"\r',  # bare CR inside a quoted field
        b"\xef\xbb\xbfa,b\n\xef\xbb\xbf1,2\n",  # only the file's first BOM is dropped
        b"a,b\r\r\n\r1,2\n\n",  # empty lines of every kind
    ],
)
def test_csv_reads_like_csv_reader_over_a_file_opened_with_newline_empty(
    tmp_path: Path, raw: bytes
) -> None:
    path = tmp_path / "endings.csv"
    path.write_bytes(raw)
    with path.open(newline="", encoding="utf-8-sig") as file:
        header, *rows = [row for row in csv.reader(file) if row]
    expected = [dict(zip(header, row, strict=True)) for row in rows]
    for page_size in (1, 2, 10):
        reader = readers.Csv(path)
        reader.init({})
        assert read_all(reader, page_size) == expected
        reader.close()
    assert_every_checkpoint_resumes(path, expected)


def test_csv_bad_record_keeps_the_good_part_of_the_page_and_the_position(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_bytes(b"a,b\r1,2\r3,4\r5,6,7\r8,9\r")
    reader = readers.Csv(path)
    reader.init({})
    assert reader.read(10) == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]
    good_end = {"offset": len(b"a,b\r1,2\r3,4\r"), "line": 3}
    assert reader.checkpoint() == good_end
    for _ in range(2):
        with pytest.raises(StorageError, match=r"ragged\.csv, line 4: 3 fields but 2 columns"):
            reader.read(10)
        assert reader.checkpoint() == good_end
    reader.close()


def test_csv_explicit_fieldnames_treat_the_first_row_as_data(tmp_path: Path) -> None:
    path = tmp_path / "noheader.tsv"
    path.write_text("1\tone\n2\ttwo\n", encoding="utf-8")
    reader = readers.Csv(path, dialect="excel-tab", fieldnames=["n", "word"])
    reader.init({})
    assert read_all(reader) == [{"n": "1", "word": "one"}, {"n": "2", "word": "two"}]
    reader.close()


def test_csv_short_rows_get_none_and_long_rows_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text("a,b,c\n1,2\n1,2,3,4\n", encoding="utf-8")
    reader = readers.Csv(path)
    reader.init({})
    assert reader.read(1) == [{"a": "1", "b": "2", "c": None}]
    with pytest.raises(StorageError, match=r"line 3: 4 fields but 3 columns"):
        reader.read(1)
    reader.close()


def test_csv_unterminated_quote_is_an_error_not_a_silent_merge(tmp_path: Path) -> None:
    path = tmp_path / "truncated.csv"
    path.write_text('a,b\n1,"open\n2,3\n', encoding="utf-8")
    reader = readers.Csv(path)
    reader.init({})
    with pytest.raises(StorageError, match="line 2: quoted field is never closed"):
        reader.read(5)
    reader.close()


def test_csv_duplicate_header_names_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text("id,id\n1,2\n", encoding="utf-8")
    with pytest.raises(StorageError, match=r"line 1: duplicate column names \['id'\]"):
        readers.Csv(path).init({})


def test_csv_header_only_and_empty_files_have_no_rows(tmp_path: Path) -> None:
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b\n", encoding="utf-8")
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    for path in (header_only, empty):
        reader = readers.Csv(path)
        reader.init({})
        assert reader.read(3) == []
        reader.close()


def test_csv_unknown_dialect_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match=r"unknown dialect 'excelish'.*'excel-tab'"):
        readers.Csv("x.csv", dialect="excelish")
