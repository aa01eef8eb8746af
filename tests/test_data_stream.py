"""Streaming sources: iter_source gives read_source's rows in bounded chunks, count_rows counts them cheaply."""

from __future__ import annotations

import codecs
import csv
import json
import tracemalloc
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preftune.data import DataError, readers
from preftune.data.sources import RawRow, count_rows, iter_source, read_source

CORPUS = Path(__file__).parent / "data_corpus"
ROWS: list[dict[str, Any]] = [
    {"prompt": f"p{i} café ☕", "chosen": f" yes {i}", "rejected": f' no, "{i}"'} for i in range(7)
]
ROWS[1]["chosen"] = " a\u2028b\u2029c\x85d"  # JSON allows these raw in strings; they must not end a line


def jsonl_bytes(rows: list[dict[str, Any]], end: str = "\n") -> bytes:
    # ensure_ascii=False writes U+2028, U+2029 and U+0085 raw, as many real files do.
    return "".join(json.dumps(r, ensure_ascii=False) + end for r in rows).encode()


ONE = [json.dumps(r, ensure_ascii=False).encode() for r in ROWS[:3]]
# name -> (file bytes, the 1-based line of each row)
JSONL: dict[str, tuple[bytes, list[int]]] = {
    "lf": (jsonl_bytes(ROWS), list(range(1, 8))),
    "crlf": (jsonl_bytes(ROWS, "\r\n"), list(range(1, 8))),
    "cr": (jsonl_bytes(ROWS, "\r"), list(range(1, 8))),
    "no_final_newline": (jsonl_bytes(ROWS).rstrip(b"\n"), list(range(1, 8))),
    "bom": (codecs.BOM_UTF8 + jsonl_bytes(ROWS), list(range(1, 8))),
    # Blank lines: empty, ASCII whitespace (\x1c counts to str.strip), and non-ASCII whitespace only
    # (U+00A0, U+2028), which a byte-level check alone would count as a row.
    "blank_lines": (
        b"\n  \t\n" + ONE[0] + b"\r\n\x1c\r" + ONE[1] + b"\n\xc2\xa0\n\xe2\x80\xa8 \r\n" + ONE[2] + b"\n\n",
        [3, 5, 8],
    ),
}


def rows_of(name: str, split: str = "train", chunk_rows: int = 3) -> list[RawRow]:
    chunks = list(iter_source(name, split, chunk_rows=chunk_rows))
    assert chunks, name
    assert all(1 <= len(chunk) <= chunk_rows for chunk in chunks), [len(c) for c in chunks]
    # Only the last chunk may be short: the rest are full.
    assert all(len(chunk) == chunk_rows for chunk in chunks[:-1]), [len(c) for c in chunks]
    return [row for chunk in chunks for row in chunk]


def as_tuples(rows: list[RawRow]) -> list[tuple[str, int, int | None, dict[str, Any]]]:
    return [(r.source, r.index, r.line, r.data) for r in rows]


def check_stream(name: str, split: str = "train") -> list[RawRow]:
    """iter_source in chunks of 1, 3 and 4 concatenates to read_source's rows; count_rows counts them."""
    whole = read_source(name, split)
    for chunk_rows in (1, 3, 4):
        assert as_tuples(rows_of(name, split, chunk_rows)) == as_tuples(whole), (name, chunk_rows)
    assert count_rows(name, split) == len(whole), name
    assert [r.index for r in whole] == list(range(len(whole)))
    return whole


@pytest.mark.parametrize("case", sorted(JSONL))
def test_jsonl_streams_the_same_rows(tmp_path: Path, case: str) -> None:
    data, lines = JSONL[case]
    path = tmp_path / f"{case}.jsonl"
    path.write_bytes(data)
    rows = check_stream(str(path))
    expected = ROWS if len(lines) == len(ROWS) else ROWS[:3]
    assert [r.data for r in rows] == expected
    assert [r.line for r in rows] == lines
    assert {r.source for r in rows} == {str(path)}


@pytest.mark.parametrize("block", [1, 2, 3, 5, 7])
def test_jsonl_rows_spanning_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    # With blocks of a few bytes every row, \r\n pair, BOM and multi-byte character is cut between blocks.
    expected = {}
    for case, (data, _) in JSONL.items():
        path = tmp_path / f"{case}.jsonl"
        path.write_bytes(data)
        expected[case] = as_tuples(read_source(str(path), "train"))
    monkeypatch.setattr(readers, "_BLOCK_BYTES", block)
    for case in JSONL:
        path = tmp_path / f"{case}.jsonl"
        assert as_tuples(rows_of(str(path))) == expected[case], case
        assert count_rows(str(path), "train") == len(expected[case]), case


@pytest.mark.parametrize("block", [4, 4 * 2**20])
def test_utf8_error_names_the_line_and_file_offset(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    monkeypatch.setattr(readers, "_BLOCK_BYTES", block)
    path = CORPUS / "invalid_utf8.jsonl"
    with pytest.raises(DataError) as err:
        read_source(str(path), "train")
    assert str(err.value) == f"{path}:2: not UTF-8 text (invalid continuation byte at byte 111)."


def test_jsonl_is_read_a_block_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.jsonl"
    path.write_bytes(jsonl_bytes(ROWS * 2000))  # about 600 KB
    monkeypatch.setattr(readers, "_BLOCK_BYTES", 16 * 1024)
    tracemalloc.start()
    try:
        seen = sum(len(chunk) for chunk in iter_source(str(path), "train", chunk_rows=50))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == 14000
    # The file as text is 600 KB and its rows as dicts several MB; a block, a line and 50 rows are far less.
    assert peak < path.stat().st_size / 4, (peak, path.stat().st_size)


def test_an_error_comes_after_the_rows_before_it(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    path.write_bytes(jsonl_bytes(ROWS) + b'{"prompt": \n')
    chunks = iter_source(str(path), "train", chunk_rows=3)
    assert [len(next(chunks)), len(next(chunks))] == [3, 3]
    with pytest.raises(DataError, match=r"late\.jsonl:8: not valid JSON"):
        next(chunks)
    assert count_rows(str(path), "train") == 8  # counting parses no JSON


def test_csv_with_a_quoted_newline(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROWS[0]))
        writer.writeheader()
        writer.writerows([{**r, "chosen": r["chosen"] + "\nmore"} for r in ROWS])
    rows = check_stream(str(path))
    assert [r.data["prompt"] for r in rows] == [r["prompt"] for r in ROWS]
    assert [r.line for r in rows] == [2 + 2 * i for i in range(7)]  # every row spans two lines


def test_parquet_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=2)  # batches end at row groups too
    rows = check_stream(str(path))
    assert [r.data for r in rows] == ROWS and {r.line for r in rows} == {None}


def test_parquet_conversion_error_names_the_column() -> None:
    path = CORPUS / "bad_timestamp.parquet"
    with pytest.raises(DataError, match=r"column\(s\) 'when' cannot be converted.*OverflowError"):
        list(iter_source(str(path), "train", chunk_rows=1))


def test_json_files(tmp_path: Path) -> None:
    listed, keyed, lines = tmp_path / "list.json", tmp_path / "keyed.json", tmp_path / "lines.json"
    listed.write_text(json.dumps(ROWS))
    keyed.write_text(json.dumps({"train": ROWS}))
    lines.write_bytes(jsonl_bytes(ROWS, "\r\n"))  # JSON lines under a .json name
    for path in (listed, keyed):
        rows = check_stream(str(path))
        assert [r.data for r in rows] == ROWS and {r.line for r in rows} == {None}
    rows = check_stream(str(lines))
    assert [r.data for r in rows] == ROWS and [r.line for r in rows] == list(range(1, 8))


def test_save_to_disk_folders(tmp_path: Path) -> None:
    single, split = tmp_path / "single", tmp_path / "dd"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(single))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "validation": datasets.Dataset.from_list(ROWS[2:6])}
    ).save_to_disk(str(split))
    assert [r.data for r in check_stream(str(single))] == ROWS
    assert [r.data for r in check_stream(str(split), "train")] == ROWS
    assert [r.data for r in check_stream(str(split), "validation")] == ROWS[2:6]
    with pytest.raises(DataError, match="no split 'test'"):
        count_rows(str(split), "test")


def test_hub_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: datasets.Dataset.from_list(ROWS))
    assert [r.data for r in check_stream("org/prefs", "test")] == ROWS


def test_sources_that_cannot_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rows.txt").write_text("hello")
    (tmp_path / "blank.jsonl").write_text("\n \r\n\u00a0\n")
    for call in (iter_source, count_rows):
        with pytest.raises(DataError, match="file not found"):
            call("missing.jsonl", "train")
        with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
            call("rows.txt", "train")
    with pytest.raises(DataError, match=r"blank\.jsonl: holds no rows"):
        list(iter_source("blank.jsonl", "train"))
    assert count_rows("blank.jsonl", "train") == 0
    with pytest.raises(ValueError, match="chunk_rows must be at least 1"):
        iter_source("blank.jsonl", "train", chunk_rows=0)
