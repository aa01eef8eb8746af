"""Row shapes -> prompt/response text: plain strings, input templates, chat templates, conversations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from preftune.config import DataConfig
from preftune.data import DataError, DataReport, TokenizedPair, load_pairs
from preftune.toy import build_toy_tokenizer

BRACKET_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def load(tmp_path: Path, tokenizer, rows: list[Any], **cfg: Any) -> tuple[list[TokenizedPair], DataReport]:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_pairs(DataConfig(train=[str(path)], **cfg), tokenizer, "train", seed=0)


def ids(tokenizer, text: str, special: bool = False) -> list[int]:
    return tokenizer(text, add_special_tokens=special).input_ids


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def test_string_rows(tmp_path: Path, toy_tokenizer) -> None:
    row = {"prompt": "Tell me: a dog sees a red ball.", "chosen": " gladly so.", "rejected": " go away now."}
    (pair,), report = load(tmp_path, toy_tokenizer, [row])
    assert pair.prompt_ids == [toy_tokenizer.bos_token_id, *ids(toy_tokenizer, row["prompt"])]
    assert pair.chosen_ids == [*ids(toy_tokenizer, " gladly so."), toy_tokenizer.eos_token_id]
    assert pair.rejected_ids == [*ids(toy_tokenizer, " go away now."), toy_tokenizer.eos_token_id]
    assert report.kept == 1 and report.dropped == {}


def test_input_template_keeps_braces_in_user_text(tmp_path: Path, toy_tokenizer) -> None:
    row = {"prompt": "fill {name} and {}", "chosen": " a", "rejected": " b"}
    (pair,), _ = load(tmp_path, toy_tokenizer, [row], input_template="Q: {}\nA:")
    assert toy_tokenizer.decode(pair.prompt_ids) == "<s>Q: fill {name} and {}\nA:"


def test_string_prompt_with_chat_template(tmp_path: Path, toy_tokenizer) -> None:
    row = {"prompt": "hi {}", "chosen": " yes", "rejected": " no"}
    (pair,), _ = load(tmp_path, toy_tokenizer, [row], apply_chat_template=True, input_template="[{}]")
    assert pair.prompt_ids == ids(toy_tokenizer, "<s><|user|>[hi {}]</s><|assistant|>")
    assert pair.prompt_ids.count(toy_tokenizer.bos_token_id) == 1
    assert pair.chosen_ids == [*ids(toy_tokenizer, " yes"), toy_tokenizer.eos_token_id]


def test_conversation_with_explicit_prompt(tmp_path: Path, toy_tokenizer) -> None:
    eos = toy_tokenizer.eos_token_id
    as_list = {"prompt": [user("hi")], "chosen": [bot("yo")], "rejected": [bot("go")]}
    as_string = {"prompt": "hi", "chosen": [bot("yo")], "rejected": [bot("go")]}
    # Prompt repeated at the start of each response list (UltraFeedback-style rows): counted once.
    repeated = {"prompt": "hi", "chosen": [user("hi"), bot("yo")], "rejected": [user("hi"), bot("go")]}
    pairs, report = load(tmp_path, toy_tokenizer, [as_list, as_string, repeated])
    assert report.kept == 3
    for pair in pairs:
        assert pair.prompt_ids == ids(toy_tokenizer, "<s><|user|>hi</s><|assistant|>")
        assert pair.chosen_ids == ids(toy_tokenizer, "yo</s>") and pair.chosen_ids[-1] == eos
        assert pair.rejected_ids == ids(toy_tokenizer, "go</s>")


def test_conversation_with_implicit_prompt(tmp_path: Path, toy_tokenizer) -> None:
    shared = [{"role": "system", "content": "be kind"}, user("hi"), bot("hello"), user("and?")]
    row = {"chosen": [*shared, bot("fine")], "rejected": [*shared, bot("bad")]}
    (pair,), _ = load(tmp_path, toy_tokenizer, [row])
    prompt = "<s><|system|>be kind</s><|user|>hi</s><|assistant|>hello</s><|user|>and?</s><|assistant|>"
    assert pair.prompt_ids == ids(toy_tokenizer, prompt)
    assert pair.chosen_ids == ids(toy_tokenizer, "fine</s>")
    assert pair.rejected_ids == ids(toy_tokenizer, "bad</s>")
    # A null prompt column (as parquet writes for absent values) means the same as no prompt key.
    (same,), _ = load(tmp_path, toy_tokenizer, [{"prompt": None, **row}])
    assert same.prompt_ids == pair.prompt_ids


def test_chat_template_from_config_overrides_tokenizer(tmp_path: Path, toy_tokenizer) -> None:
    row = {"prompt": [user("hi")], "chosen": [bot("yo")], "rejected": [bot("go")]}
    (pair,), _ = load(tmp_path, toy_tokenizer, [row], chat_template=BRACKET_TEMPLATE)
    # The template writes no BOS and the tokenizer must not add one to rendered text.
    assert pair.prompt_ids == ids(toy_tokenizer, "[user] hi\n[assistant] ")
    # Rendered "yo\n": the trailing newline is stripped, then EOS appended once.
    assert pair.chosen_ids == [*ids(toy_tokenizer, "yo"), toy_tokenizer.eos_token_id]


def test_missing_chat_template_is_a_config_error(tmp_path: Path) -> None:
    tokenizer = build_toy_tokenizer(["hi there", "yo go"])
    tokenizer.chat_template = None
    rows = [{"prompt": "hi", "chosen": "yo", "rejected": "go"}]
    with pytest.raises(
        DataError, match=r"rows\.jsonl:1 \(row 0\): this row needs a chat template.*data\.chat_template"
    ):
        load(tmp_path, tokenizer, rows, apply_chat_template=True)
    with pytest.raises(DataError, match=r"data\.chat_template"):
        load(tmp_path, tokenizer, [{"chosen": [user("a"), bot("b")], "rejected": [user("a"), bot("c")]}])
    pairs, _ = load(tmp_path, tokenizer, rows)  # plain strings need no template
    assert len(pairs) == 1
    with pytest.raises(DataError, match="does not parse"):
        load(tmp_path, tokenizer, rows, apply_chat_template=True, chat_template="{% if %}")


def test_conversation_drops(tmp_path: Path, toy_tokenizer) -> None:
    rows = [
        {"prompt": [user("hi")], "chosen": [bot("yo")], "rejected": [{"role": "assistant", "content": 5}]},
        {"prompt": [user("hi")], "chosen": [{"content": "yo"}], "rejected": [bot("go")]},
        {"prompt": [user("hi")], "chosen": [bot("yo")], "rejected": "go"},
        {"prompt": [user("hi")], "chosen": [user("yo")], "rejected": [bot("go")]},
        {"chosen": [user("a"), bot("b")], "rejected": [user("x"), bot("c")]},
        {"chosen": [user("a"), bot("b")], "rejected": [user("a"), bot("b"), user("more")]},
        {"prompt": [user("hi")], "chosen": [bot("same")], "rejected": [bot("same")]},
        {"prompt": [user("hi")], "chosen": [bot("  ")], "rejected": [bot("go")]},
        {"prompt": [user("hi")], "chosen": [], "rejected": [bot("go")]},
        {"prompt": 3, "chosen": [bot("yo")], "rejected": [bot("go")]},
    ]
    pairs, report = load(tmp_path, toy_tokenizer, rows)
    assert pairs == []
    assert report.dropped == {
        "bad_message": 3,
        "no_assistant_turn": 1,
        "no_shared_prompt": 2,
        "identical_responses": 1,
        "empty_field": 2,
        "not_a_string": 1,
    }
    assert [e["index"] for e in report.examples["bad_message"]] == [0, 1, 2]
    assert [e["index"] for e in report.examples["no_shared_prompt"]] == [4, 5]


def test_template_mismatch_and_template_error(tmp_path: Path, toy_tokenizer) -> None:
    # The generation prompt says "ASSISTANT:" but a rendered assistant turn says "assistant:".
    mismatching = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    row = {"prompt": [user("hi")], "chosen": [bot("yo")], "rejected": [bot("go")]}
    pairs, report = load(tmp_path, toy_tokenizer, [row], chat_template=mismatching)
    assert pairs == [] and report.dropped == {"template_mismatch": 1}
    refusing = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        + (BRACKET_TEMPLATE)
    )
    with_system = {
        "prompt": [{"role": "system", "content": "s"}, user("hi")],
        **{k: row[k] for k in ("chosen", "rejected")},
    }
    pairs, report = load(tmp_path, toy_tokenizer, [row, with_system], chat_template=refusing)
    assert len(pairs) == 1 and report.dropped == {"template_error": 1}
