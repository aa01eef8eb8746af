"""``preftune iterate`` parts: reward loading and checking, reward-model scores, pair building, config keys."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from preftune.config import ConfigError, load_config
from preftune.iterate import PromptSamples, build_pairs, load_reward
from preftune.iterate.pairs import DROP_REASONS
from preftune.iterate.reward import score
from preftune.toy import build_toy_tokenizer, toy_corpus

REWARDS_FILE = Path(__file__).with_name("iterate_rewards.py")


def _reward_file(folder: Path, name: str = "rewards.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(REWARDS_FILE, folder / name))


# ---------------------------------------------------------------- reward loading and checking


def test_module_function_imports_from_the_current_folder(tmp_path, monkeypatch) -> None:
    _reward_file(tmp_path, "iterate_test_rewards_mod.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "iterate_test_rewards_mod", raising=False)
    fn = load_reward("iterate_test_rewards_mod:length")
    assert score(fn, ["p", "q"], ["abc", ""], ["a", "b"]) == [3.0, 0.0]
    assert str(tmp_path) not in sys.path  # the folder was only added for the import


def test_file_path_function(tmp_path) -> None:
    path = _reward_file(tmp_path / "sub")
    fn = load_reward(f"{path}:space_first")
    assert score(fn, ["p"] * 3, [" a", "a", " "], ["a", "b", "c"]) == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
        ("{dir}/missing.py:fn", "missing.py does not exist"),
        ("{dir}/rewards.py:nope", "has no attribute 'nope'"),
        ("{dir}/rewards.py:NOT_A_FUNCTION", "is a int, not a function"),
        ("{dir}/broken.py:fn", "loading"),
        ("just-a-name", "neither a reward-model folder nor module:function"),
        ("{dir}/rewards.py:", "neither a reward-model folder"),
    ],
)
def test_bad_reward_specs_are_one_line_errors(tmp_path, spec, needle) -> None:
    _reward_file(tmp_path)
    (tmp_path / "broken.py").write_text("import json\nraise RuntimeError('boom at import')\n")
    with pytest.raises(ConfigError) as info:
        load_reward(spec.format(dir=tmp_path))
    message = str(info.value)
    assert message.startswith("iterate.reward: ") and needle in message and "\n" not in message
    if "broken" in spec:
        assert "broken.py:2" in message and "RuntimeError: boom at import" in message


def test_scores_are_checked_and_name_the_prompt(tmp_path) -> None:
    where = ["prompt 0, sample 0", "prompt 0, sample 1", "prompt 3, sample 1"]
    three = ["a", "b", "c"]
    checks = [
        (lambda p, r: [1.0, 2.0], "returned 2 scores for 3 responses"),
        (lambda p, r: [1.0, float("nan"), 2.0], "returned nan for prompt 0, sample 1"),
        (lambda p, r: [1.0, 2.0, float("inf")], "returned inf for prompt 3, sample 1"),
        (lambda p, r: [1.0, "high", 2.0], "returned 'high' for prompt 0, sample 1; scores must be numbers"),
        (lambda p, r: 5.0, "returned a float, not a list of scores"),
    ]
    for fn, needle in checks:
        with pytest.raises(ConfigError, match=needle):
            score(fn, three, three, where)
    with pytest.raises(ConfigError) as info:
        score(load_reward(f"{_reward_file(tmp_path)}:crash"), three, three, where)
    assert "rewards.py:18 in crash: ZeroDivisionError: division by zero" in str(info.value)
    # Tensors and numpy-like values are fine, converted to floats.
    assert score(lambda p, r: torch.tensor([[1.5], [2.0], [-1.0]]), three, three, where) == [1.5, 2.0, -1.0]


# ---------------------------------------------------------------- a reward model folder


def _reward_model_dir(root: Path, num_labels: int = 1) -> tuple[Path, torch.nn.Module, object]:
    tokenizer = build_toy_tokenizer(toy_corpus())
    config = AutoConfig.for_model(
        "llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_labels=num_labels, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32).eval()
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root, model, tokenizer


def test_reward_model_scores_equal_a_manual_forward(tmp_path) -> None:
    folder, model, tokenizer = _reward_model_dir(tmp_path / "rm")
    prompts = [
        "Tell me: the cat likes a red ball.",
        "hi",
        "a much longer prompt about the old map and a kite",
    ]
    responses = [" the cat, thank you kindly.", " go away now", "x"]
    reward = load_reward(str(folder), batch_size=2)  # batches of 2 and 1: rows of unequal length get padded
    got = score(reward, prompts, responses, ["a", "b", "c"])
    for prompt, response, value in zip(prompts, responses, got, strict=True):
        # The toy template, written out: the reward model reads one user turn and one assistant turn.
        text = f"<s><|user|>{prompt}</s><|assistant|>{response}</s>"
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            expected = model(input_ids=ids).logits[0, 0].item()
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # Without a chat template the text is prompt + response with the tokenizer's own special tokens (BOS).
    tokenizer.chat_template = None
    model.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    plain = score(load_reward(str(tmp_path / "plain"), batch_size=3), prompts, responses, ["a", "b", "c"])
    for prompt, response, value in zip(prompts, responses, plain, strict=True):
        ids = torch.tensor([tokenizer(prompt + response)["input_ids"]])
        assert ids[0, 0] == tokenizer.bos_token_id
        with torch.no_grad():
            assert value == pytest.approx(model(input_ids=ids).logits[0, 0].item(), rel=1e-5, abs=1e-6)


def test_reward_model_with_several_labels_is_refused(tmp_path) -> None:
    folder, _, _ = _reward_model_dir(tmp_path / "rm", num_labels=2)
    with pytest.raises(ConfigError, match="has num_labels 2; a reward model has exactly one output"):
        load_reward(str(folder))


# ---------------------------------------------------------------- pair building


def _samples(responses: list[str], scores: list[float], index: int = 0) -> PromptSamples:
    return PromptSamples(index, f"prompt {index}", responses, scores, [True] * len(responses))


@pytest.mark.parametrize(
    ("responses", "scores", "min_gap", "expected"),
    [
        (["a", "b", "c"], [0.2, 0.9, 0.5], 0.0, ("b", "a", 0.9, 0.2)),
        (["a", "b", "c"], [0.2, 0.9, 0.5], 0.7, ("b", "a", 0.9, 0.2)),  # gap 0.7 == min: kept
        (["a", "b", "c"], [0.2, 0.9, 0.5], 0.71, "gap_below_min"),
        (["a", "b", "", "c"], [0.2, 0.9, 5.0, 0.3], 0.5, ("b", "a", 0.9, 0.2)),  # empty never competes
        (["a", "b", "c"], [0.5, 0.5, 0.5], 0.0, "tied_scores"),  # no preference even with min_gap 0
        (["a", "b", "c", "d"], [0.1, 0.9, 0.9, 0.1], 0.0, ("b", "a", 0.9, 0.1)),  # ties: first one
        (["same", "same", "same"], [0.1, 0.9, 0.5], 0.0, "identical_responses"),
        # The lowest score belongs to chosen's own text, so rejected is the lowest among the others.
        (["x", "x", "y"], [0.1, 0.9, 0.4], 0.0, ("x", "y", 0.9, 0.4)),
        (["", "  ", "a"], [1.0, 2.0, 3.0], 0.0, "empty_response"),
        (["", "\n"], [1.0, 2.0], 0.0, "empty_response"),
    ],
)
def test_best_worst_pairs_closed_form(responses, scores, min_gap, expected) -> None:
    pairs, dropped = build_pairs([_samples(responses, scores, index=7)], min_gap)
    if isinstance(expected, str):
        assert pairs == [] and dropped == {expected: [7]}
        assert expected in DROP_REASONS
    else:
        assert dropped == {}
        (pair,) = pairs
        assert (pair.chosen, pair.rejected, pair.chosen_score, pair.rejected_score) == expected
        assert pair.to_row() == {"prompt": "prompt 7", "chosen": expected[0], "rejected": expected[1],
                                 "chosen_score": expected[2], "rejected_score": expected[3], "prompt_index": 7}  # fmt: skip


def test_every_prompt_is_accounted_for() -> None:
    samples = [
        _samples(["a", "b"], [1.0, 0.0], 0),
        _samples(["a", "a"], [1.0, 0.0], 1),
        _samples(["a", "b"], [1.0, 1.0], 2),
        _samples(["", "b"], [1.0, 0.0], 3),
        _samples(["a", "b"], [0.0, 0.1], 4),
        _samples(["c", "d"], [3.0, -1.0], 5),
    ]
    pairs, dropped = build_pairs(samples, min_gap=0.5)
    assert [p.prompt_index for p in pairs] == [0, 5]
    assert dropped == {
        "identical_responses": [1],
        "tied_scores": [2],
        "empty_response": [3],
        "gap_below_min": [4],
    }


def test_bad_iterate_values_name_the_key() -> None:
    for key, value, needle in [
        ("iterate.rounds", 0, "iterate.rounds: must be >= 1"),
        ("iterate.samples_per_prompt", 1, "iterate.samples_per_prompt: must be >= 2"),
        ("iterate.min_score_gap", -0.1, "iterate.min_score_gap: must be >= 0"),
        ("iterate.temperature", 0, "iterate.temperature: must be > 0"),
        ("iterate.top_p", 1.5, "iterate.top_p: must be in (0, 1]"),
        ("iterate.generation_batch_size", 0, "iterate.generation_batch_size: must be >= 1"),
        ("iterate.reference", "policy", "iterate.reference: 'policy' is not one of round, original"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            load_config(None, {key: value})
