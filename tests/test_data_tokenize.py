"""Token ids at the prompt/response boundary, BOS and EOS exactly once, and every truncation policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from preftune.config import DataConfig
from preftune.data import DataReport, Row, load_rows
from preftune.data.errors import DropRow
from preftune.data.tokenize import truncate
from preftune.toy import build_toy_tokenizer

BOS, EOS = 1, 2


def load(tmp_path: Path, tokenizer, rows: list[Any], **cfg: Any) -> tuple[list[Row], DataReport]:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_rows(DataConfig(train=[str(path)], **cfg), tokenizer, "train", seed=0)


def test_response_tokens_are_exact_at_a_merging_boundary(tmp_path: Path) -> None:
    # Trained so that "hello" + "world" merges into one token when tokenised together.
    tokenizer = build_toy_tokenizer(["say helloworld peace", "helloworld " * 20, "world peace"] * 20)
    prompt, response = "say hello", "world peace"
    joined = tokenizer(prompt + response).input_ids
    separate = tokenizer(prompt).input_ids + tokenizer(response, add_special_tokens=False).input_ids
    assert joined != separate  # the premise: a merge crosses the boundary
    assert "Ġhelloworld" in tokenizer.convert_ids_to_tokens(joined)

    (pair,), _ = load(tmp_path, tokenizer, [{"prompt": prompt, "chosen": response, "rejected": "x"}])
    assert pair.prompt_ids == tokenizer(prompt).input_ids
    eos = tokenizer.eos_token_id
    assert pair.chosen_ids == [*tokenizer(response, add_special_tokens=False).input_ids, eos]
    assert pair.prompt_ids + pair.chosen_ids == [*separate, eos]


def test_eos_appended_once(tmp_path: Path, toy_tokenizer) -> None:
    rows = [
        {"prompt": "p", "chosen": " yes</s>", "rejected": " no"},
        {"prompt": [{"role": "user", "content": "p"}], "chosen": [{"role": "assistant", "content": "yes"}],
         "rejected": [{"role": "assistant", "content": "no"}]},
    ]  # fmt: skip
    (plain, chat), _ = load(tmp_path, toy_tokenizer, rows)
    assert plain.chosen_ids[-2:] != [EOS, EOS] and plain.chosen_ids.count(EOS) == 1
    assert plain.rejected_ids[-1] == EOS and plain.rejected_ids.count(EOS) == 1
    assert chat.chosen_ids.count(EOS) == 1 and chat.chosen_ids[-1] == EOS
    # A template that writes "</s>\n" after each turn: the newline is stripped, EOS still ends the response.
    newline_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    (chat,), _ = load(tmp_path, toy_tokenizer, rows[1:], chat_template=newline_template)
    assert chat.chosen_ids == toy_tokenizer("yes</s>", add_special_tokens=False).input_ids


def test_bos_never_doubled(tmp_path: Path, toy_tokenizer) -> None:
    rows = [
        {"prompt": "<s>hello", "chosen": " a", "rejected": " b"},  # text starts with BOS; tokenizer adds one
        {"prompt": "hello", "chosen": " a", "rejected": " b"},
        {"prompt": [{"role": "user", "content": "hello"}], "chosen": [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "assistant", "content": "b"}]},  # the toy template writes BOS itself
    ]  # fmt: skip
    (with_bos_text, plain, chat), _ = load(tmp_path, toy_tokenizer, rows)
    assert toy_tokenizer("<s>hello").input_ids[:2] == [BOS, BOS]  # the premise
    assert (
        with_bos_text.prompt_ids
        == plain.prompt_ids
        == [BOS, *toy_tokenizer("hello", add_special_tokens=False).input_ids]
    )
    assert chat.prompt_ids[:2] == [BOS, 3] and chat.prompt_ids.count(BOS) == 1
    (string_chat,), _ = load(tmp_path, toy_tokenizer, rows[1:2], apply_chat_template=True)
    assert string_chat.prompt_ids == chat.prompt_ids


# ---------------------------------------------------------------- truncation on known ids

PROMPT = [BOS, 11, 12, 13, 14, 15, 16]  # 7 tokens, BOS first
CHOSEN = [21, 22, 23, 24]
REJECTED = [31, 32, 33]


def cut(prompt: list[int] = PROMPT, bos: int | None = BOS, **cfg: Any) -> tuple[list[int], ...]:
    kept, (chosen, rejected) = truncate(prompt, [CHOSEN, REJECTED], DataConfig(**cfg), bos)
    return kept, chosen, rejected


def test_fits_untouched() -> None:
    assert cut(max_len=11) == (PROMPT, CHOSEN, REJECTED)
    assert cut(max_len=11, truncation="drop") == (PROMPT, CHOSEN, REJECTED)


def test_prompt_left_keeps_bos() -> None:
    # max(1, 8 - 4) = 4 prompt tokens: BOS + last 3.
    assert cut(max_len=8) == ([BOS, 14, 15, 16], CHOSEN, REJECTED)
    # Responses longer than max_len: 1 prompt token (BOS), responses cut to 3 - 1 = 2.
    assert cut(max_len=3) == ([BOS], [21, 22], [31, 32])
    no_bos = [11, 12, 13, 14, 15, 16]
    assert cut(no_bos, bos=None, max_len=8) == ([13, 14, 15, 16], CHOSEN, REJECTED)
    assert cut(no_bos, bos=None, max_len=3) == ([16], [21, 22], [31, 32])


def test_max_prompt_len_first() -> None:
    assert cut(max_len=100, max_prompt_len=3) == ([BOS, 15, 16], CHOSEN, REJECTED)
    assert cut(max_len=100, max_prompt_len=1) == ([BOS], CHOSEN, REJECTED)
    # Prompt capped to 5, then 5 + 4 > 8: prompt_left cuts it further to 4.
    assert cut(max_len=8, max_prompt_len=5) == ([BOS, 14, 15, 16], CHOSEN, REJECTED)
    assert cut(max_len=8, max_prompt_len=5, truncation="response_right") == (
        [BOS, 13, 14, 15, 16],
        [21, 22, 23],
        [31, 32, 33],
    )


def test_response_right_keeps_prompt() -> None:
    assert cut(max_len=9, truncation="response_right") == (PROMPT, [21, 22], [31, 32])
    with pytest.raises(DropRow) as drop:
        cut(max_len=7, truncation="response_right")
    assert drop.value.reason == "no_response_room"


def test_drop_policy() -> None:
    with pytest.raises(DropRow) as drop:
        cut(max_len=10, truncation="drop")
    assert drop.value.reason == "too_long"


def test_truncation_end_to_end(tmp_path: Path, toy_tokenizer) -> None:
    row = {"prompt": "Tell me: the cat likes a red ball.", "chosen": " the cat likes a red ball, happy to help.",
           "rejected": " go away now."}  # fmt: skip
    (full,), _ = load(tmp_path, toy_tokenizer, [row])
    longest = len(full.chosen_ids)
    assert full.prompt_ids[0] == BOS and len(full.prompt_ids) > 3 and longest > len(full.rejected_ids)
    (pair,), report = load(tmp_path, toy_tokenizer, [row], max_len=longest + 3)
    assert pair.prompt_ids == [BOS, *full.prompt_ids[-2:]]
    assert (pair.chosen_ids, pair.rejected_ids) == (full.chosen_ids, full.rejected_ids)
    assert report.truncated == 1
    (pair,), _ = load(
        tmp_path, toy_tokenizer, [row], max_len=len(full.prompt_ids) + 2, truncation="response_right"
    )
    assert pair.prompt_ids == full.prompt_ids
    assert (pair.chosen_ids, pair.rejected_ids) == (full.chosen_ids[:2], full.rejected_ids[:2])
    pairs, report = load(tmp_path, toy_tokenizer, [row], max_len=longest + 3, truncation="drop")
    assert pairs == [] and report.dropped == {"too_long": 1}
