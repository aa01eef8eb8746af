"""What a run tells its user: the data lines (truncation, an unused chat template) and the end-of-run summary."""

from __future__ import annotations

import json
import re
from pathlib import Path

from preftune.training import runner
from preftune.training.summary import run_summary
from toy_env import toy_config

CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


WORKSPACE = {"n_train": 16, "n_eval": 8}  # the sizes of this module's `ws` (tests/conftest.py)


def _data_lines(cfg) -> list[str]:
    """The lines about the data, less the one per split saying where its tokenised store is."""
    lines: list[str] = []
    runner.build_trainer(cfg, log=lines.append)
    stores = [line for line in lines if re.match(r"data (train|eval): (tokenised|reusing)", line)]
    assert len(stores) == 2, lines  # one per split
    return [line for line in lines if line.startswith("data ") and line not in stores]


def test_a_second_build_of_the_same_data_says_it_reuses_the_store(ws, tmp_path) -> None:
    shared = {"data.cache_dir": str(tmp_path / "stores")}
    for out, verb in (("a", "tokenised 16 rows into"), ("b", "reusing the tokenised store")):
        lines: list[str] = []
        runner.build_trainer(toy_config(ws, tmp_path / out, **shared), log=lines.append)
        assert any(line.startswith(f"data train: {verb} {tmp_path / 'stores'}") for line in lines), lines


def test_data_lines_count_truncated_rows_and_name_an_unused_chat_template(ws, tmp_path) -> None:
    # The toy tokenizer has a chat template and the toy rows have plain-string prompts.
    plain = _data_lines(toy_config(ws, tmp_path / "a", **{"data.max_len": 16}))
    assert plain[0].startswith("data train: 16 rows, 16 kept (")
    truncated = int(plain[0].split("kept (")[1].split(" of them")[0])
    assert 0 < truncated <= 16  # max_len 16 cuts the toy rows
    assert any(
        line.startswith("data train: 16 plain-string prompts are used as plain text")
        and "--data.apply_chat_template true" in line
        for line in plain
    )
    untruncated = _data_lines(toy_config(ws, tmp_path / "b", **{"data.max_len": 1024}))
    assert untruncated[0].startswith("data train: 16 rows, 16 kept (0 of them truncated), dropped: none")
    applied = toy_config(
        ws, tmp_path / "c", **{"data.chat_template": CHAT_TEMPLATE, "data.apply_chat_template": True}
    )
    assert not any("plain-string prompts" in line for line in _data_lines(applied))


def test_run_summary_shows_the_last_step_beside_the_last_evaluation(tmp_path) -> None:
    rows = [
        {"step": 1, "loss": 0.7, "rewards/accuracies": 0.5, "rewards/margins": 0.01, "rewards/chosen": 0.02,
         "rewards/rejected": 0.01, "epoch": 0.5, "consumed_samples": 8},
        {"step": 2, "eval/loss": 0.65, "eval/rewards/accuracies": 0.75, "eval/rewards/margins": 0.1,
         "eval/rewards/chosen": 0.2, "eval/rewards/rejected": 0.1},
        {"step": 2, "loss": 0.6, "rewards/accuracies": 1.0, "rewards/margins": 0.25, "rewards/chosen": 0.5,
         "rewards/rejected": 0.25, "epoch": 1.0, "consumed_samples": 16},
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "final").mkdir()
    text = run_summary(Path(tmp_path), 75.4)
    lines = text.splitlines()
    assert lines[0] == "done in 1 min 15 s: 2 steps (1.00 epochs, 16 pairs)"
    assert lines[1].split() == ["train", "(step", "2)", "held-out", "(step", "2)"]
    assert lines[2].split() == ["loss", "0.6000", "0.6500"]
    assert lines[3].split() == ["reward", "accuracy", "1.000", "0.750"]
    assert lines[4].split() == ["reward", "margin", "+0.2500", "+0.1000"]
    assert f"model        {tmp_path / 'final'}   (AutoModelForCausalLM.from_pretrained)" in lines
    assert not any(line.startswith("checkpoints") for line in lines)  # none were written
