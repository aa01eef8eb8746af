"""Bad data never gives a traceback, a hang or a silently shorter dataset.

Every broken input ends in a one-line DataError naming the file (and, for one row, its line/row and key), or
in rows dropped and counted under a reason in the DataReport. Three sources of broken input: the hand-made
files in tests/data_corpus/, hypothesis-generated rows and bytes, and one run of the real CLI.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from preftune.config import DataConfig
from preftune.data import DataError, DataReport, Row, load_rows
from preftune.toy import write_toy_model_dir

CORPUS = Path(__file__).parent / "data_corpus"

# File -> fragments its one-line DataError must contain (the file name is always checked too).
ERRORS: dict[str, list[str]] = {
    "truncated_line.jsonl": ["truncated_line.jsonl:2:", "not valid JSON", "Unterminated string"],
    "truncated.json": ["truncated.json:1:", "not valid JSON"],
    "missing_key.jsonl": ["missing_key.jsonl:2 (row 1)", "missing key 'rejected'", "data.rejected_key"],
    "missing_column.csv": ["missing_column.csv:2 (row 0)", "missing key 'rejected'", "data.rejected_key"],
    "invalid_utf8.jsonl": ["invalid_utf8.jsonl:2:", "not UTF-8 text", "at byte 111"],
    "utf16.jsonl": ["utf16.jsonl:1:", "not UTF-8 text"],
    "empty.jsonl": ["empty.jsonl: holds no rows"],
    "blank_lines.jsonl": ["blank_lines.jsonl: holds no rows"],
    "array_line.jsonl": [
        "array_line.jsonl:2:",
        "expected an object with prompt/chosen/rejected keys, got list",
    ],
    "null_line.jsonl": ["null_line.jsonl:2:", "got NoneType"],
    "nul_bytes.jsonl": ["nul_bytes.jsonl:2:", "Invalid control character"],
    "bom_mid_file.jsonl": ["bom_mid_file.jsonl:2:", "Unexpected UTF-8 BOM"],
    "deep_nesting.jsonl": ["deep_nesting.jsonl:1:", "nested deeper than the JSON parser allows"],
    "huge_integer.jsonl": ["huge_integer.jsonl:1:", "4300 digits"],
    "object_without_list.json": ["object_without_list.json:", "must hold a list of rows", "['rows']"],
    "scalar.json": ["scalar.json:", "must hold a list of rows, found int"],
    "short_row.csv": ["short_row.csv:3 (row 1)", "has 2 values for the header's 3 columns"],
    "extra_value.csv": ["extra_value.csv:2 (row 0)", "has 4 values for the header's 3 columns"],
    "unclosed_quote.csv": ["unclosed_quote.csv:3:", "not valid CSV"],
    "not_parquet.parquet": ["not_parquet.parquet:", "cannot be read as Parquet"],
    "bad_timestamp.parquet": ["bad_timestamp.parquet:", "column(s) 'when'", "OverflowError"],
}
# File -> (pairs kept, drops by reason): the exact outcome, so a row can neither vanish nor slip through.
DROPS: dict[str, tuple[int, dict[str, int]]] = {
    "wrong_types.jsonl": (1, {"not_a_string": 4}),
    "dict_prompt.jsonl": (1, {"not_a_string": 1}),
    "null_chosen.parquet": (1, {"not_a_string": 1}),
    "empty_strings.jsonl": (1, {"empty_field": 3}),
    "empty_cells.csv": (1, {"empty_field": 1}),
    "identical.jsonl": (1, {"identical_responses": 1}),
    "mismatched_prefix.jsonl": (0, {"prompt_mismatch": 2}),
    "no_shared_prefix.jsonl": (0, {"no_shared_prompt": 1}),
    "no_assistant_turn.jsonl": (1, {"no_assistant_turn": 2}),
    "bad_messages.jsonl": (0, {"bad_message": 4}),
    "lone_surrogate.jsonl": (1, {"invalid_unicode": 1}),
    "bom.jsonl": (2, {}),
    "line_separators.jsonl": (1, {}),  # U+2028/U+2029/U+0085 inside strings do not end a JSON line
}


def _parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


# A template that reads a field of the row's own messages besides role and content.
TOOLS_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
    "{% for t in m.tool_calls or [] %} {{ t.name }}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def load(path: Path, tokenizer: Any, **cfg: Any) -> tuple[list[Row], DataReport]:
    return load_rows(DataConfig(train=[str(path)], **cfg), tokenizer, "train", seed=0)


def check_error(err: DataError, path: Path) -> str:
    message = str(err)
    assert str(path) in message, message
    assert "\n" not in message and len(message) < 1000, message  # one paragraph, not a dump
    return message


def check_accounting(pairs: list[Row], report: DataReport, max_len: int | None = None) -> None:
    assert report.kept == len(pairs)
    assert report.kept + sum(report.dropped.values()) == report.rows_read
    assert all(n > 0 for n in report.dropped.values())
    json.dumps(report.to_dict())  # data_report.json can be written
    for row in pairs:  # pair rows, and rows of K responses (a "rejected" list)
        assert row.prompt_ids and len(row.responses) >= 2 and all(row.responses)
        assert len(set(map(tuple, row.responses))) == len(row.responses)  # no two the same
        assert len(row.scores) == len(row.responses) and min(row.scores) < max(row.scores)
        if max_len is not None:
            assert len(row.prompt_ids) + max(map(len, row.responses)) <= max_len


def test_every_corpus_file_has_an_expected_outcome() -> None:
    files = {p.name for p in CORPUS.iterdir()}
    assert files == set(ERRORS) | set(DROPS)
    assert not set(ERRORS) & set(DROPS)
    assert sum(p.stat().st_size for p in CORPUS.iterdir()) < 200_000


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_corpus_file_fails_with_a_clear_error(name: str, toy_tokenizer) -> None:
    path = CORPUS / name
    with pytest.raises(DataError) as err:
        load(path, toy_tokenizer)
    message = check_error(err.value, path)
    for fragment in ERRORS[name]:
        assert fragment in message, message


@pytest.mark.parametrize("name", sorted(DROPS))
def test_corpus_file_drops_and_reports(name: str, toy_tokenizer) -> None:
    pairs, report = load(CORPUS / name, toy_tokenizer)
    check_accounting(pairs, report)
    kept, dropped = DROPS[name]
    assert (report.kept, report.dropped) == (kept, dropped)
    for reason in dropped:
        assert report.examples[reason][0]["source"] == str(CORPUS / name)


@pytest.mark.parametrize(
    ("truncation", "field", "outcome"),
    [
        ("prompt_left", "chosen", "truncated"),
        ("response_right", "chosen", "truncated"),
        ("drop", "chosen", "too_long"),
        ("prompt_left", "prompt", "truncated"),
        ("response_right", "prompt", "no_response_room"),
    ],
)
def test_huge_row(tmp_path: Path, toy_tokenizer, truncation: str, field: str, outcome: str) -> None:
    row = {"prompt": "Tell me: a cat.", "chosen": " yes.", "rejected": " no."}
    row[field] = " the cat likes a red ball" * 8000  # 200k characters
    path = tmp_path / "huge.jsonl"
    path.write_text(json.dumps(row) + "\n")
    pairs, report = load(path, toy_tokenizer, max_len=64, truncation=truncation)
    check_accounting(pairs, report, max_len=64)
    if outcome == "truncated":
        assert report.kept == report.truncated == 1
    else:
        assert report.dropped == {outcome: 1}


def test_template_failing_on_a_row_field_is_a_drop(tmp_path: Path, toy_tokenizer) -> None:
    bot = {"role": "assistant", "content": "go"}
    rows = [
        {"prompt": "hi", "chosen": [{**bot, "tool_calls": [{"name": "f"}]}], "rejected": [bot]},
        {"prompt": "hi", "chosen": [{**bot, "tool_calls": 5}], "rejected": [bot]},  # TypeError in the loop
    ]
    path = tmp_path / "tools.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, report = load(path, toy_tokenizer, chat_template=TOOLS_TEMPLATE)
    check_accounting(pairs, report)
    assert (report.kept, report.dropped) == (1, {"template_error": 1})


# --- property tests -------------------------------------------------------------------------------------


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` 3 times in 4. (st.one_of flattens nested one_ofs and weighs every leaf equally, so
    ``one_of(good, good, good, bad)`` would mostly draw from a ``bad`` made of many alternatives.)"""
    return st.integers(0, 3).flatmap(lambda k: bad if k == 0 else good)


SPECIAL = ["", " ", "\n", "\t ", "<s>", "</s>", "<|user|>", "{}", "a\u2028b", "\x85", "\x00", "é☕"]
WORDS = ["hi", " yes", " no", "Tell me: the cat likes a red ball.", " the cat", " a red ball.", " gladly"]
word = st.sampled_from(WORDS)
text = mostly(
    word,
    st.one_of(
        st.sampled_from(SPECIAL),
        st.text(st.characters(exclude_categories=("Cs",)), max_size=12),  # surrogates: lone_surrogate.jsonl
    ),
)
scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), text)
role = st.one_of(st.sampled_from(["user", "assistant", "system"]), text, st.none(), st.integers())
tool_calls = st.one_of(st.integers(), st.lists(st.fixed_dictionaries({"name": text}), max_size=2))
good_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "assistant", "system"]), "content": text},
    optional={"tool_calls": tool_calls},
)
any_message = st.one_of(
    st.fixed_dictionaries({}, optional={"role": role, "content": scalar, "name": scalar}),
    scalar,
)
messages = st.lists(mostly(good_message, any_message), max_size=3)
wild = st.one_of(text, messages, scalar, st.dictionaries(text, scalar, max_size=2))
mostly_word = mostly(word, wild)


@st.composite
def conversation_row(draw: st.DrawFn) -> dict[str, Any]:
    """Chosen and rejected sharing a random leading part, with an explicit, implicit or odd prompt."""
    shared = draw(st.lists(good_message, max_size=3))
    row = {
        side: shared + draw(st.lists(good_message, min_size=1, max_size=2)) for side in ("chosen", "rejected")
    }
    prompt = draw(st.sampled_from(["absent", "none", "shared", "string", "wild"]))
    if prompt == "none":
        row["prompt"] = None
    elif prompt == "shared":
        row["prompt"] = shared
    elif prompt == "string":
        row["prompt"] = draw(mostly_word)
    elif prompt == "wild":
        row["prompt"] = draw(wild)
    return row


string_row = st.fixed_dictionaries(
    {"prompt": mostly_word, "chosen": mostly_word, "rejected": mostly_word}, optional={"note": scalar}
)
wild_row = st.fixed_dictionaries(
    {"chosen": wild, "rejected": wild}, optional={"prompt": wild, "note": scalar}
)
row = mostly(st.one_of(string_row, conversation_row()), wild_row)
data_config = st.fixed_dictionaries(
    {
        "max_len": st.integers(2, 16),
        "truncation": st.sampled_from(["prompt_left", "response_right", "drop"]),
        "max_prompt_len": st.one_of(st.none(), st.integers(1, 8)),
        "apply_chat_template": st.booleans(),
        "input_template": st.sampled_from([None, "Q: {} A:"]),
        "chat_template": st.sampled_from([None, None, TOOLS_TEMPLATE]),
    }
)
# database=None: no .hypothesis/ folder in the checkout; a failure prints its example to reproduce it.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@FUZZ
@given(
    rows=st.lists(row, min_size=1, max_size=6),
    drop_key=st.sampled_from([None] * 8 + ["chosen", "rejected", "prompt"]),
    ensure_ascii=st.booleans(),
    cfg=data_config,
)
def test_fuzzed_rows_are_kept_dropped_or_refused(
    tmp_path: Path,
    toy_tokenizer,
    rows: list[dict[str, Any]],
    drop_key: str | None,
    ensure_ascii: bool,
    cfg: dict,
) -> None:
    if drop_key is not None:
        rows[-1].pop(drop_key, None)
    path = tmp_path / "fuzz.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows), encoding="utf-8")
    try:
        pairs, report = load(path, toy_tokenizer, **cfg)
    except DataError as err:
        event(f"error: {str(err).split(': ', 1)[1][:25]}")
        check_error(err, path)
        return
    event(f"kept {min(report.kept, 1)}, drops {sorted(report.dropped)}")
    assert report.rows_read == len(rows)  # every line written is a row read: nothing split or merged
    check_accounting(pairs, report, max_len=cfg["max_len"])


ROWS = [
    {"prompt": "hi", "chosen": " yes", "rejected": " no"},
    {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "yo"}],
     "rejected": [{"role": "assistant", "content": "go"}]},
]  # fmt: skip
VALID = {
    ".jsonl": b"".join(json.dumps(r).encode() + b"\n" for r in ROWS),
    ".json": json.dumps(ROWS, indent=1).encode(),
    ".csv": b'prompt,chosen,rejected\nhi, yes, no\n"a ""b""\nc", d, e\n',
    ".parquet": _parquet_bytes(ROWS[:1] * 2),
}


@st.composite
def corrupted(draw: st.DrawFn) -> tuple[str, bytes]:
    """A suffix and random bytes, or a valid file of that type with a few bytes cut, inserted or overwritten."""
    suffix = draw(st.sampled_from(sorted(VALID)))
    if draw(st.integers(0, 3)) == 0:
        return suffix, draw(st.binary(max_size=200))
    data = bytearray(VALID[suffix])
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["cut", "insert", "overwrite"]))
        if edit == "cut":
            del data[at:]
        else:
            chunk = draw(st.binary(min_size=1, max_size=4))
            data[at : at + (len(chunk) if edit == "overwrite" else 0)] = chunk
    return suffix, bytes(data)


@FUZZ
@given(file=corrupted())
def test_fuzzed_bytes_never_raise_anything_but_data_error(
    tmp_path: Path, toy_tokenizer, file: tuple[str, bytes]
) -> None:
    suffix, data = file
    path = tmp_path / f"bytes{suffix}"
    path.write_bytes(data)
    try:
        pairs, report = load(path, toy_tokenizer, max_len=16)
    except DataError as err:
        event(f"error: {str(err).split(': ', 1)[1][:25]}")
        check_error(err, path)
        return
    event(f"kept {min(report.kept, 1)}, drops {sorted(report.dropped)}")
    check_accounting(pairs, report, max_len=16)


# --- the CLI ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_reports_a_broken_file_in_one_line(tmp_path: Path) -> None:
    model = write_toy_model_dir(tmp_path / "m")
    bad = tmp_path / "train.jsonl"
    bad.write_bytes((CORPUS / "truncated_line.jsonl").read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "preftune", "train", "--model.name_or_path", str(model), "--data.train",
         str(bad), "--output_dir", str(tmp_path / "out"), "--log.progress", "false"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("preftune: error: ") and f"{bad}:2:" in lines[0]
