"""Row shapes -> prompt/response text and ids: pairs and rows of K scored responses; plain strings, input templates,
chat templates, conversations; max_responses, merges, drops and truncation of rows of K responses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from preftune.config import Config, ConfigError, DataConfig
from preftune.data import DataError, DataReport, Row, load_rows
from preftune.data.rows import merge_duplicates, spread_by_rank
from preftune.data.tokenize import truncate
from preftune.toy import build_toy_tokenizer
from preftune.validate import validate

BOS, EOS = 1, 2
CHAT_HI = "<s><|user|>hi</s><|assistant|>"  # the toy template's rendering of the prompt [user "hi"]

BRACKET_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def load(tmp_path: Path, tokenizer, rows: list[Any], **cfg: Any) -> tuple[list[Row], DataReport]:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_rows(DataConfig(train=[str(path)], **cfg), tokenizer, "train", seed=0)


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


def _write(tmp_path: Path, rows: list[Any]) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- row shapes -> exact ids


def test_scored_string_row(tmp_path: Path, toy_tokenizer) -> None:
    row = {"prompt": "Tell me: a cat.", "responses": [" yes.", " no.", " maybe so."], "scores": [2, -1.5, 2]}
    (group,), report = load(tmp_path, toy_tokenizer, [row])
    assert group.prompt_ids == [BOS, *ids(toy_tokenizer, "Tell me: a cat.")]
    assert group.responses == [[*ids(toy_tokenizer, r), EOS] for r in row["responses"]]
    assert group.scores == [2.0, -1.5, 2.0]  # ties allowed, row order kept
    assert (group.source, group.index) == (str(tmp_path / "rows.jsonl"), 0)
    assert report.kept == 1 and report.dropped == {} and report.merged_responses == 0
    # The prompt goes through the same rendering as a pair's: here as one user turn of the chat template.
    (chat,), _ = load(tmp_path, toy_tokenizer, [{**row, "prompt": "hi"}], apply_chat_template=True)
    assert chat.prompt_ids == ids(toy_tokenizer, CHAT_HI)


def test_several_rejected_string_row(tmp_path: Path, toy_tokenizer) -> None:
    row = {"prompt": "Tell me: a cat.", "chosen": " yes.", "rejected": [" no.", " maybe so."]}
    (group,), _ = load(tmp_path, toy_tokenizer, [row])
    assert group.prompt_ids == [BOS, *ids(toy_tokenizer, "Tell me: a cat.")]
    assert group.responses == [[*ids(toy_tokenizer, r), EOS] for r in (" yes.", " no.", " maybe so.")]
    assert group.scores == [1.0, 0.0, 0.0]


def test_conversational_scored_rows(tmp_path: Path, toy_tokenizer) -> None:
    answers = [[bot("yo")], [bot("go")], [bot("no")]]
    explicit = {"prompt": [user("hi")], "responses": answers, "scores": [3, 1, 2]}
    as_string = {"prompt": "hi", "responses": answers, "scores": [3, 1, 2]}
    repeated = {"prompt": "hi", "responses": [[user("hi"), *a] for a in answers], "scores": [3, 1, 2]}
    implicit = {"responses": [[user("hi"), *a] for a in answers], "scores": [3, 1, 2]}
    groups, report = load(tmp_path, toy_tokenizer, [explicit, as_string, repeated, implicit])
    assert report.kept == 4
    for group in groups:
        assert group.prompt_ids == ids(toy_tokenizer, CHAT_HI)
        assert group.responses == [ids(toy_tokenizer, f"{w}</s>") for w in ("yo", "go", "no")]
        assert group.scores == [3.0, 1.0, 2.0]


def test_conversational_several_rejected_row(tmp_path: Path, toy_tokenizer) -> None:
    shared = [{"role": "system", "content": "be kind"}, user("hi")]
    row = {"chosen": [*shared, bot("fine")], "rejected": [[*shared, bot("bad")], [*shared, bot("no")]]}
    (group,), _ = load(tmp_path, toy_tokenizer, [row])
    assert group.prompt_ids == ids(toy_tokenizer, "<s><|system|>be kind</s><|user|>hi</s><|assistant|>")
    assert group.responses == [ids(toy_tokenizer, f"{w}</s>") for w in ("fine", "bad", "no")]
    assert group.scores == [1.0, 0.0, 0.0]


def test_configured_keys(tmp_path: Path, toy_tokenizer) -> None:
    row = {"q": "Tell me: a cat.", "outs": [" yes.", " no."], "marks": [0, 1]}
    (group,), _ = load(
        tmp_path, toy_tokenizer, [row], prompt_key="q", responses_key="outs", scores_key="marks"
    )
    assert group.responses == [[*ids(toy_tokenizer, r), EOS] for r in (" yes.", " no.")]
    assert group.scores == [0.0, 1.0]


PAIR_ROWS = [
    {"prompt": "Tell me: a cat.", "chosen": " yes.", "rejected": " no."},
    {"prompt": "Tell me: the cat likes a red ball.", "chosen": " the cat likes a red ball, happy to help.",
     "rejected": " go away now."},
    {"prompt": [user("hi")], "chosen": [bot("yo")], "rejected": [bot("go")]},
    {"chosen": [user("hi"), bot("yo")], "rejected": [user("hi"), bot("go")]},
    {"prompt": "", "chosen": " a", "rejected": " b"},  # empty_field
    {"prompt": "p", "chosen": " a", "rejected": " a"},  # identical_responses
]  # fmt: skip


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"max_len": 9},
        {"max_len": 9, "truncation": "response_right"},
        {"max_len": 9, "truncation": "drop"},
    ],
)
def test_a_pair_row_and_the_row_of_its_two_responses_give_the_same_ids(
    tmp_path: Path, toy_tokenizer, cfg: dict[str, Any]
) -> None:
    """{"chosen", "rejected"} and {"responses": [chosen, rejected], "scores": [1, 0]} are one row to the loader
    (the row whose responses are identical is left out: as a pair it is refused, as a row merged to one)."""
    pairs = [row for row in PAIR_ROWS if row.get("chosen") != row.get("rejected")]
    as_rows = [  # an implicit prompt (conversations that start alike) stays implicit
        {
            **{k: v for k, v in p.items() if k == "prompt"},
            "responses": [p["chosen"], p["rejected"]],
            "scores": [1, 0],
        }
        for p in pairs
    ]
    got = {}
    for name, rows in (("pairs", pairs), ("rows", as_rows)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        loaded, report = load_rows(DataConfig(train=[str(path)], **cfg), toy_tokenizer, "train", seed=0)
        got[name] = ([(g.prompt_ids, g.responses, g.scores, g.index) for g in loaded], report.dropped)
    assert len(got["pairs"][0]) >= 2 and all(g[2] == [1.0, 0.0] for g in got["pairs"][0])
    assert got["pairs"] == got["rows"]


def test_one_file_mixes_pair_and_group_rows(tmp_path: Path, toy_tokenizer) -> None:
    rows = [
        PAIR_ROWS[0],
        {"prompt": "Tell me: a cat.", "responses": [" yes.", " no.", " maybe so."], "scores": [1, 0, 2]},
    ]
    groups, report = load(tmp_path, toy_tokenizer, rows)
    assert [len(g.responses) for g in groups] == [2, 3] and report.kept == 2
    assert groups[0].prompt_ids == groups[1].prompt_ids


# ---------------------------------------------------------------- max_responses


def test_spread_by_rank_closed_form() -> None:
    scores = [3, 7, 1, 5, 0, 6, 2, 4]  # ranks best first: indices 1, 5, 3, 7, 0, 6, 2, 4
    # cap 4: ranks round(i * 7 / 3) = 0, 2, 5, 7 -> indices 1, 3, 6, 4, returned in row order
    assert spread_by_rank(scores, 4) == [1, 3, 4, 6]
    assert spread_by_rank(scores, 2) == [1, 4]  # the best and the worst
    assert spread_by_rank(scores, 8) == spread_by_rank(scores, None) == list(range(8))
    assert spread_by_rank([0, 1, 2, 3], 3) == [0, 1, 3]  # ranks 0, 1.5 -> 2 (halves up), 3
    assert spread_by_rank([1, 1, 0], 2) == [0, 2]  # a tie for best: the first in row order


def test_max_responses_end_to_end(tmp_path: Path, toy_tokenizer) -> None:
    words = [" a", " b", " c", " d", " e", " f", " g", " h"]
    row = {"prompt": "Tell me: a cat.", "responses": words, "scores": [3, 7, 1, 5, 0, 6, 2, 4]}
    (group,), _ = load(tmp_path, toy_tokenizer, [row], max_responses=4)
    assert group.responses == [[*ids(toy_tokenizer, w), EOS] for w in (" b", " d", " e", " g")]
    assert group.scores == [7.0, 5.0, 0.0, 2.0]
    with pytest.raises(ConfigError, match=r"data\.max_responses.*>= 2"):
        validate(Config(data=DataConfig(train=["x.jsonl"], max_responses=1)), training=False)


# ---------------------------------------------------------------- merges and drops


def test_merge_duplicates_keeps_highest_score() -> None:
    assert merge_duplicates(["a", "b", "a"], [0, 2, 3]) == ([0, 1], [3.0, 2.0])
    assert merge_duplicates([(1, 2), (1, 2)], [5, 1]) == ([0], [5.0])


def test_duplicate_responses_are_merged(tmp_path: Path, toy_tokenizer) -> None:
    rows = [
        {"prompt": "Tell me: a cat.", "responses": [" yes.", " no.", " yes."], "scores": [0, 2, 3]},
        # Two conversations that render to the same text are one response too.
        {"prompt": [user("hi")], "responses": [[bot("yo")], [bot("go")], [bot("yo")]], "scores": [1, 0, 0]},
    ]
    (strings, chat), report = load(tmp_path, toy_tokenizer, rows)
    assert strings.responses == [[*ids(toy_tokenizer, r), EOS] for r in (" yes.", " no.")]
    assert strings.scores == [3.0, 2.0]
    assert chat.responses == [ids(toy_tokenizer, "yo</s>"), ids(toy_tokenizer, "go</s>")]
    assert chat.scores == [1.0, 0.0]
    assert report.merged_responses == 2 and report.to_dict()["merged_responses"] == 2


GOOD = {"prompt": "Tell me: a cat.", "responses": [" yes.", " no."], "scores": [1, 0]}
LONG_A = " the cat likes a red ball, happy to help."
LONG_B = " the cat likes a red ball, go away."  # shares its first 6 tokens with LONG_A


def test_every_group_drop_reason_counted_with_its_row(tmp_path: Path, toy_tokenizer) -> None:
    rows = [
        GOOD,  # 0 kept
        {**GOOD, "responses": [" yes."], "scores": [1]},  # 1 too_few_responses
        {**GOOD, "responses": [" yes.", " yes."]},  # 2 too_few_responses, once merged
        {"prompt": "Tell me: a cat.", "responses": [" yes.", " no."]},  # 3 bad_scores: missing
        {**GOOD, "scores": ["1", 0]},  # 4 bad_scores: not a number
        {**GOOD, "scores": [float("inf"), 0]},  # 5 bad_scores: json writes Infinity, and reads it back as inf
        {**GOOD, "scores": [1, 0, 2]},  # 6 bad_scores: wrong count
        {**GOOD, "scores": [True, False]},  # 7 bad_scores: booleans are not scores
        {**GOOD, "scores": [0.5, 0.5]},  # 8 tied_scores
        {**GOOD, "responses": [" yes.", "  "]},  # 9 empty_field
        {**GOOD, "responses": [" yes.", " no.", " yes."], "scores": [1, 0, 0]},  # 10 kept, one merged
        # 11: a 7-token prompt leaves 6 tokens per response, and both long answers cut to the same 6
        {**GOOD, "responses": [LONG_A, LONG_B]},
        {**GOOD, "responses": [LONG_A, LONG_B, " no."], "scores": [1, 0, 1]},  # 12 merged, then all tied
        {**GOOD, "responses": [LONG_A, LONG_B, " no."], "scores": [2, 1, 0]},  # 13 kept, LONG_B merged
        {**GOOD, "scores": None},  # 14 bad_scores: null
    ]
    groups, report = load(tmp_path, toy_tokenizer, rows, max_len=13, truncation="response_right")
    assert [g.index for g in groups] == [0, 10, 13]
    assert report.dropped == {
        "too_few_responses": 2,
        "bad_scores": 6,
        "tied_scores": 1,
        "empty_field": 1,
        "identical_after_truncation": 2,
    }
    assert report.kept + sum(report.dropped.values()) == report.rows_read == len(rows)
    indices = {reason: [e["index"] for e in quoted] for reason, quoted in report.examples.items()}
    assert indices == {
        "too_few_responses": [1, 2],
        "bad_scores": [3, 4, 5, 6, 7],  # report_examples = 5 quoted, row 14 counted only
        "tied_scores": [8],
        "empty_field": [9],
        "identical_after_truncation": [11, 12],
    }
    assert report.merged_responses == 2  # row 10's second " yes." and row 13's LONG_B
    assert groups[2].scores == [2.0, 0.0] and report.truncated == 1
    # drop: a group is dropped when any one response (with the prompt) is over max_len
    groups, report = load(tmp_path, toy_tokenizer, rows[:1] + rows[13:14], max_len=13, truncation="drop")
    assert [g.index for g in groups] == [0] and report.dropped == {"too_long": 1}


def test_group_truncation_on_known_ids() -> None:
    prompt = [BOS, 11, 12, 13, 14, 15, 16]
    responses = [[21, 22, 23, 24], [31, 32, 33], [41]]
    # prompt_left: the prompt cut once, for the longest response (8 - 4 = 4 tokens, BOS kept)
    assert truncate(prompt, responses, DataConfig(max_len=8), BOS) == ([BOS, 14, 15, 16], responses)
    # then each response against max_len on its own: 3 - 1 prompt token = 2 each, the short one untouched
    assert truncate(prompt, responses, DataConfig(max_len=3), BOS) == ([BOS], [[21, 22], [31, 32], [41]])
    cfg = DataConfig(max_len=9, truncation="response_right")
    assert truncate(prompt, responses, cfg, BOS) == (prompt, [[21, 22], [31, 32], [41]])


def test_group_truncation_end_to_end(tmp_path: Path, toy_tokenizer) -> None:
    row = {"prompt": "Tell me: the cat likes a red ball.", "responses": [LONG_A, " go away now.", " b"],
           "scores": [2, 0, 1]}  # fmt: skip
    (full,), _ = load(tmp_path, toy_tokenizer, [row])
    longest = len(full.responses[0])
    assert longest > max(len(r) for r in full.responses[1:]) and len(full.prompt_ids) > 3
    (group,), report = load(tmp_path, toy_tokenizer, [row], max_len=longest + 3)
    assert group.prompt_ids == [BOS, *full.prompt_ids[-2:]] and group.responses == full.responses
    assert report.truncated == 1
    (group,), _ = load(
        tmp_path, toy_tokenizer, [row], max_len=len(full.prompt_ids) + 3, truncation="response_right"
    )
    assert group.prompt_ids == full.prompt_ids
    assert group.responses == [r[:3] for r in full.responses]
    assert group.responses[2] == [*ids(toy_tokenizer, " b"), EOS]  # 2 tokens: each response cut on its own


# ---------------------------------------------------------------- structural errors


def test_responses_not_a_list_is_a_data_error(tmp_path: Path, toy_tokenizer) -> None:
    rows = [GOOD, {"prompt": "Tell me: a cat.", "responses": " yes. no.", "scores": [1, 0]}]
    with pytest.raises(DataError) as err:
        load(tmp_path, toy_tokenizer, rows)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'rows.jsonl'}:2 (row 1): key 'responses' (data.responses_key)")
    assert "holds str, not a list" in message and "\n" not in message
    # A several-rejected row without its chosen response names the missing key like a pair row does.
    with pytest.raises(
        DataError, match=r"rows\.jsonl:1 \(row 0\): missing key 'chosen' \(data\.chosen_key\)"
    ):
        load(tmp_path, toy_tokenizer, [{"prompt": "p", "rejected": [" a", " b"]}])
