"""Drops are counted by reason with the right row quoted; the report adds up and is written as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from preftune.config import DataConfig
from preftune.data import DataReport, load_rows, write_data_report

GOOD = {
    "prompt": "Tell me: a bird reads the old map.",
    "chosen": " a bird reads, gladly so.",
    "rejected": " no.",
}
ROWS = [
    GOOD,  # 0 kept
    {**GOOD, "chosen": "   "},  # 1 empty_field
    {**GOOD, "prompt": ""},  # 2 empty_field
    {**GOOD, "rejected": None},  # 3 not_a_string
    {**GOOD, "chosen": 5},  # 4 not_a_string
    {**GOOD, "rejected": GOOD["chosen"]},  # 5 identical_responses
    {**GOOD, "prompt": "Tell me: " * 40},  # 6 no_response_room (response_right, prompt alone too long)
    # 7 identical_after_truncation: a 21-token prompt leaves 3 tokens, " a bird reads", for both responses
    {
        "prompt": GOOD["prompt"] * 2,
        "chosen": " a bird reads the old map, happy to help.",
        "rejected": " a bird reads the old map, go away.",
    },
    {**GOOD, "chosen": "\n"},  # 8 empty_field
]


def test_every_drop_reason_counted_with_its_row(tmp_path: Path, toy_tokenizer) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    cfg = DataConfig(train=[str(path)], max_len=24, truncation="response_right", report_examples=2)
    pairs, report = load_rows(cfg, toy_tokenizer, "train", seed=0)
    assert [(p.source, p.index) for p in pairs] == [(str(path), 0)]
    assert report.dropped == {
        "empty_field": 3,
        "not_a_string": 2,
        "identical_responses": 1,
        "no_response_room": 1,
        "identical_after_truncation": 1,
    }
    assert report.kept + sum(report.dropped.values()) == report.rows_read == len(ROWS)
    # Only the first report_examples rows are quoted, in file order, with their source and index.
    assert [e["index"] for e in report.examples["empty_field"]] == [1, 2]
    assert [e["index"] for e in report.examples["not_a_string"]] == [3, 4]
    example = report.examples["identical_responses"][0]
    assert example["source"] == str(path) and example["index"] == 5
    assert example["row"].startswith("{'prompt': 'Tell me: a bird")
    assert len(report.examples["no_response_room"][0]["row"]) <= 303  # long rows are cut short


def test_report_written_as_json(tmp_path: Path, toy_tokenizer) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:3]))
    cfg = DataConfig(train=[str(path)], eval=[str(path)])
    reports = {split: load_rows(cfg, toy_tokenizer, split, seed=0)[1] for split in ("train", "eval")}
    written = write_data_report(reports, tmp_path / "out")  # folder created on demand
    assert written == tmp_path / "out" / "data_report.json"
    data = json.loads(written.read_text())
    assert data["train"] == {
        "split": "train",
        "sources": {str(path): {"rows": 3, "used": 3, "repeated": 0}},
        "rows_read": 3,
        "kept": 1,
        "truncated": 0,
        "merged_responses": 0,
        "dropped": {"empty_field": 2},
        "examples": {
            "empty_field": [
                {"source": str(path), "index": 1, "row": repr(ROWS[1])},
                {"source": str(path), "index": 2, "row": repr(ROWS[2])},
            ]
        },
    }
    assert data["eval"]["split"] == "eval" and data["eval"]["kept"] == 1
    assert written.read_text().startswith('{\n  "train": {')  # indent 2


def test_empty_report() -> None:
    assert DataReport(split="eval").to_dict() == {
        "split": "eval", "sources": {}, "rows_read": 0, "kept": 0, "truncated": 0, "merged_responses": 0,
        "dropped": {}, "examples": {},
    }  # fmt: skip
