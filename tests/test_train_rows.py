"""Training on rows of K scored responses, alone or mixed with pairs: a pair written as a row of two trains as
the pair, every metric is logged on every row shape (a mixture's terms, WPO's weight, the log-probs, the rank
metrics), every layout trains the same, a listwise loss learns, and two processes equal one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from launch import TORCHRUN, launch, train_args
from preftune.training import runner
from test_deepspeed import needs_deepspeed
from toy_env import (
    assert_close_weights,
    assert_same_metrics,
    load_weights,
    logged_metrics,
    toy_config,
    write_jsonl,
)

WORKSPACE = {
    "n_train": 32,
    "n_eval": 16,
    "groups": True,
}  # the sizes of this module's `ws` (tests/conftest.py)


RUN = {"train.max_steps": 3, "train.eval_steps": 3, "train.micro_batch_size": 4, "optim.adam_eps": 1e-3}


def test_a_pair_written_as_a_row_of_two_trains_exactly_as_the_pair(ws, tmp_path) -> None:
    """The same pairs as {"prompt", "chosen", "rejected"} rows and as {"prompt", "responses", "scores"} rows of
    two: one loader, one layout, one loss, so the two runs log the very same numbers."""
    pair_rows = [json.loads(line) for line in Path(ws["train"]).read_text().splitlines()]
    as_rows = [
        {"prompt": r["prompt"], "responses": [r["chosen"], r["rejected"]], "scores": [1, 0]}
        for r in pair_rows
    ]
    rows_file = write_jsonl(tmp_path / "rows.jsonl", as_rows)
    opts = {**RUN, "loss.nll_coef": 0.5, "loss.wpo": True}
    runner.train(toy_config(ws, tmp_path / "pairs", **opts))
    runner.train(toy_config(ws, tmp_path / "rows", **opts, **{"data.train": str(rows_file)}))
    assert_same_metrics(tmp_path / "pairs", tmp_path / "rows", atol=0.0, rtol=0.0)
    assert_close_weights(
        load_weights(tmp_path / "pairs" / "final"), load_weights(tmp_path / "rows" / "final"), 0, 0
    )


def test_every_metric_is_logged_on_rows_of_three_mixed_with_pairs(ws, tmp_path) -> None:
    """A mixture (sigmoid + sft) with WPO over pairs and rows of three responses, train and eval: each key a pair
    run logs, plus the rank metrics, each finite and consistent with the others."""
    opts = {**RUN, "data.train": [ws["train"], ws["group_train"]], "data.eval": ws["group_eval"],
            "data.max_responses": 3, "loss.type": "sigmoid,sft", "loss.wpo": True, "loss.pairs": "all",
            "train.logging_steps": 1}  # fmt: skip
    runner.train(toy_config(ws, tmp_path, **opts))
    rows = logged_metrics(tmp_path)
    shared = ["loss", "loss/sigmoid", "loss/sft", "wpo/weight", "nll", "logps/chosen", "logps/rejected",
              "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
              "rewards/top1_accuracies", "rewards/spearman", "rows", "pairs"]  # fmt: skip
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval/loss" in r]
    assert train and evals
    for row, prefix in [(r, "") for r in train] + [(r, "eval/") for r in evals]:
        for key in shared:
            assert math.isfinite(row[prefix + key]), (row["step"], prefix + key)
        # Each pair's loss is its terms' sum times its WPO weight w <= 1 (loss.wpo_clamp); the terms are unweighted.
        assert 0 < row[prefix + "wpo/weight"] <= 1
        assert 0 < row[prefix + "loss"] <= row[prefix + "loss/sigmoid"] + row[prefix + "loss/sft"] + 1e-6
        assert row[prefix + "logps/chosen"] < 0 and row[prefix + "logps/rejected"] < 0
        margin = row[prefix + "rewards/chosen"] - row[prefix + "rewards/rejected"]
        assert row[prefix + "rewards/margins"] == pytest.approx(margin, abs=1e-6)
    # Eval rows are all of three responses: 3 ordered pairs each with scores 1, 0, 0.25 kept by max_responses.
    assert evals[-1]["eval/pairs"] == 3 * evals[-1]["eval/rows"] == 3 * 16


@pytest.mark.equivalence
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_every_layout_trains_groups_the_same(ws, tmp_path, layout) -> None:
    data = {"data.train": ws["group_train"], "data.eval": ws["group_eval"], "loss.pairs": "all"}
    runner.train(toy_config(ws, tmp_path / "shared", **RUN, **data, **{"train.layout": "prefix_shared"}))
    runner.train(toy_config(ws, tmp_path / layout, **RUN, **data, **{"train.layout": layout}))
    assert_same_metrics(tmp_path / "shared", tmp_path / layout, atol=1e-6)


def test_a_listwise_loss_learns_the_ranking(ws, tmp_path) -> None:
    opts = {"data.train": ws["group_train"], "data.eval": ws["group_eval"],
            "loss.type": "plackett_luce", "train.max_epochs": 3, "train.eval_at_start": True,
            "train.micro_batch_size": 4}  # fmt: skip
    runner.train(toy_config(ws, tmp_path, **opts))
    evals = [r for r in logged_metrics(tmp_path) if "eval/loss" in r]
    first, last = evals[0], evals[-1]
    # policy == reference: sum_k log n_k with n_k = #{j: s_j <= s_k} = 4, 2, 3, 1 for scores 1, 0, 0.25, -0.5
    assert first["eval/loss"] == pytest.approx(math.log(24), rel=1e-6)
    assert last["eval/loss"] < first["eval/loss"] - 0.05
    assert last["eval/rewards/accuracies"] > 0.6 and last["eval/rewards/spearman"] > 0.3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "extra"),
    [
        ("ddp", {}),
        ("fsdp2", {}),
        pytest.param("deepspeed", {"strategy.zero_stage": 3}, marks=needs_deepspeed, id="deepspeed-zero3"),
    ],
)
def test_two_processes_train_groups_as_one(ws, tmp_path, strategy, extra) -> None:
    opts = {**RUN, "train.micro_batch_size": 2, "loss.pairs": "all",
            "data.train": ws["group_train"], "data.eval": ws["group_eval"]}  # fmt: skip
    runner.train(toy_config(ws, tmp_path / "one", **opts))
    launch(train_args(TORCHRUN, ws, tmp_path / "two", strategy, {**opts, **extra}))
    assert_same_metrics(tmp_path / "one", tmp_path / "two", atol=1e-6)


def test_lora_trains_groups_against_its_adapters_off_self(ws, tmp_path) -> None:
    opts = {"data.train": ws["group_train"], "data.eval": ws["group_eval"], "loss.type": "plackett_luce",
            "lora.rank": 4, "train.max_steps": 2, "train.eval_at_start": True, "optim.lr": 1e-2}  # fmt: skip
    runner.train(toy_config(ws, tmp_path, **opts))
    rows = logged_metrics(tmp_path)
    # The B matrices start at zero: policy == reference at first, then the adapters move the policy away.
    assert rows[0]["eval/loss"] == pytest.approx(math.log(24), rel=1e-6)
    assert rows[1]["loss"] == pytest.approx(math.log(24), rel=1e-6)
    assert [r for r in rows if "eval/loss" in r][-1]["eval/loss"] != pytest.approx(math.log(24), rel=1e-6)


def test_best_response_nll_is_the_top_scored_responses_per_token_nll() -> None:
    import torch

    from preftune.losses import ResponseLogps
    from preftune.training.objective import best_response_nll

    # Group 0: scores 2, 2, 1 -> the two tied tops, per-token NLL 6/3 and 4/2 -> 2; group 1: the second, 6/4.
    logps = ResponseLogps(
        policy=torch.tensor([-6.0, -4.0, -9.0, -5.0, -6.0]), ref=None, tokens=torch.tensor([3, 2, 3, 5, 4]),
        scores=torch.tensor([2.0, 2.0, 1.0, 0.0, 1.0]), row=torch.tensor([0, 0, 0, 1, 1]), num_rows=2,
    )  # fmt: skip
    assert best_response_nll(logps).tolist() == pytest.approx([2.0, 1.5])
