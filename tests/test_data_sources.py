"""Reading sources: every supported format gives the same rows; broken inputs fail naming the file and row."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preftune.config import DataConfig
from preftune.data import DataError, load_rows
from preftune.data.sources import read_source

# Commas, quotes, newlines, braces and non-ASCII text: whatever breaks a naive CSV/JSON writer or reader.
ROWS: list[dict[str, Any]] = [
    {"prompt": "Tell me: the cat likes a red ball.", "chosen": " yes, gladly.", "rejected": " no."},
    {"prompt": 'Quote "this", please', "chosen": " a\nb", "rejected": " {x}, {}"},
    {"prompt": "café ☕", "chosen": " ok", "rejected": " not ok"},
]


def write_jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> str:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> str:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def raw(name: str, split: str = "train") -> list[dict[str, Any]]:
    return [r.data for r in read_source(name, split)]


def test_every_format_reads_the_same_rows(tmp_path: Path, toy_tokenizer) -> None:
    folder = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(folder))
    paths = [
        write_jsonl(tmp_path / "a.jsonl", ROWS),
        str(tmp_path / "a.json"),
        str(tmp_path / "b.json"),
        write_parquet(tmp_path / "a.parquet", ROWS),
        write_csv(tmp_path / "a.csv", ROWS),
        str(folder),
    ]
    Path(paths[1]).write_text(json.dumps(ROWS))
    Path(paths[2]).write_text(json.dumps({"data": ROWS}))
    for path in paths:
        assert raw(path) == ROWS, path

    reference = None
    for path in paths:
        pairs, report = load_rows(DataConfig(train=[path]), toy_tokenizer, "train", seed=0)
        assert [(p.source, p.index) for p in pairs] == [(path, 0), (path, 1), (path, 2)]
        ids = [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs]
        reference = reference or ids
        assert ids == reference, path
        assert report.sources == {path: {"rows": 3, "used": 3, "repeated": 0}}


def test_json_variants(tmp_path: Path) -> None:
    lines = tmp_path / "lines.json"
    write_jsonl(lines, ROWS)  # JSON lines under a .json name
    assert raw(str(lines)) == ROWS
    keyed = tmp_path / "keyed.json"
    keyed.write_text(json.dumps({"train": ROWS[:2], "meta": 1}))
    assert raw(str(keyed)) == ROWS[:2]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": ROWS}))
    with pytest.raises(DataError, match=r"'data' or 'train' list; found an object with keys \['rows'\]"):
        read_source(str(other), "train")


def test_dataset_dict_folder_picks_split(tmp_path: Path) -> None:
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "validation": datasets.Dataset.from_list(ROWS[:1])}
    ).save_to_disk(str(folder))
    assert raw(str(folder), "train") == ROWS
    assert raw(str(folder), "validation") == ROWS[:1]
    with pytest.raises(DataError) as err:
        read_source(str(folder), "test")
    assert str(folder) in str(err.value)
    assert "no split 'test'; its splits are ['train', 'validation']" in str(err.value)


def test_eval_reads_eval_split(tmp_path: Path, toy_tokenizer) -> None:
    folder = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[1:])}
    ).save_to_disk(str(folder))
    cfg = DataConfig(train=[str(folder)], eval=[str(folder)])
    train, _ = load_rows(cfg, toy_tokenizer, "train", seed=0)
    evals, report = load_rows(cfg, toy_tokenizer, "eval", seed=0)
    assert len(train) == 3 and len(evals) == 2
    assert report.split == "eval" and report.rows_read == 2


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"prompt": "x", "chosen": \n')
    with pytest.raises(DataError) as err:
        read_source(str(path), "train")
    message = str(err.value)
    assert f"{path}:3:" in message and "not valid JSON" in message


def test_non_object_row_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "list.jsonl", [ROWS[0], [1, 2]])
    with pytest.raises(DataError, match=r"list\.jsonl:2: expected an object"):
        read_source(path, "train")


def test_missing_key_names_file_row_key_and_existing_keys(tmp_path: Path, toy_tokenizer) -> None:
    rows = [ROWS[0], ROWS[1], {"prompt": "p", "chosen": "c", "answer_b": "r"}]
    jsonl = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError) as err:
        load_rows(DataConfig(train=[jsonl]), toy_tokenizer, "train", seed=0)
    message = str(err.value)
    assert f"{jsonl}:3 (row 2)" in message  # file, 1-based line, 0-based row index
    assert "missing key 'rejected' (data.rejected_key)" in message
    assert "the row's keys are 'prompt', 'chosen', 'answer_b'" in message


def test_configured_key_names(tmp_path: Path, toy_tokenizer) -> None:
    rows = [{"q": r["prompt"], "good": r["chosen"], "bad": r["rejected"]} for r in ROWS]
    path = write_jsonl(tmp_path / "renamed.jsonl", rows)
    cfg = DataConfig(train=[path], prompt_key="q", chosen_key="good", rejected_key="bad")
    pairs, _ = load_rows(cfg, toy_tokenizer, "train", seed=0)
    assert len(pairs) == 3


def test_path_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for missing in ("data/train.jsonl", "nothing_here", "org/name.parquet"):
        with pytest.raises(DataError, match="file not found"):
            read_source(missing, "train")
    (tmp_path / "rows.txt").write_text("hello")
    with pytest.raises(DataError) as err:
        read_source("rows.txt", "train")
    assert "unsupported file type '.txt'" in str(err.value) and ".jsonl, .json, .parquet, .csv" in str(
        err.value
    )
    for name, text in (("empty.jsonl", "\n\n"), ("empty.json", "[]"), ("empty.csv", "")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=f"{name}: holds no rows"):
            read_source(name, "train")


def test_hub_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    calls: list[tuple[str, str]] = []

    def fake_load(name: str, split: str) -> datasets.Dataset:
        calls.append((name, split))
        if name == "org/missing":
            raise FileNotFoundError("Dataset 'org/missing' doesn't exist on the Hub")
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert raw("org/prefs-v2.5", "test") == ROWS
    assert calls == [("org/prefs-v2.5", "test")]
    with pytest.raises(DataError) as err:
        read_source("org/missing", "train")
    assert (
        "org/missing: neither a local file or folder nor a dataset loadable from the Hugging Face Hub"
        in str(err.value)
    )


def test_same_source_twice_is_an_error(tmp_path: Path, toy_tokenizer) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", ROWS)
    with pytest.raises(DataError, match="listed more than once"):
        load_rows(DataConfig(train=[path, path]), toy_tokenizer, "train", seed=0)


def test_csv_rows_name_their_first_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", [ROWS[1], {"prompt": "p", "chosen": "c", "rejected": "r"}])
    rows = read_source(path, "train")
    assert [r.line for r in rows] == [2, 4]  # row 0 spans lines 2-3 (a quoted newline)
    assert rows[1].where() == f"{path}:4 (row 1)"
