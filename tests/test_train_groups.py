"""Training on prompt groups (data.groups): a pair trained as a group of two is the pair run, every layout trains
the same, a listwise loss learns, two DDP processes equal one, and what groups do not do yet is refused."""

from __future__ import annotations

import math

import pytest

from launch import TORCHRUN, launch, train_args
from preftune.config import ConfigError
from preftune.training import runner
from test_deepspeed import needs_deepspeed
from toy_env import (
    assert_close_weights,
    assert_same_metrics,
    checked_config,
    load_weights,
    logged_metrics,
    toy_config,
)

GROUPS = {"data.groups": True}


WORKSPACE = {
    "n_train": 32,
    "n_eval": 16,
    "groups": True,
}  # the sizes of this module's `ws` (tests/conftest.py)


RUN = {"train.max_steps": 3, "train.eval_steps": 3, "train.micro_batch_size": 4, "optim.adam_eps": 1e-3}


@pytest.mark.equivalence
@pytest.mark.parametrize("nll", [{}, {"loss.nll_coef": 0.5}], ids=["dpo", "with-nll"])
def test_a_pair_trained_as_a_group_of_two_is_the_pair_run(ws, tmp_path, nll) -> None:
    runner.train(toy_config(ws, tmp_path / "pairs", **RUN, **nll))
    runner.train(toy_config(ws, tmp_path / "groups", **RUN, **GROUPS, **nll))
    pairs, groups = logged_metrics(tmp_path / "pairs"), logged_metrics(tmp_path / "groups")
    assert len(pairs) == len(groups) > 0
    shared = ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "tokens")
    shared += ("nll",) if nll else ()
    assert ("nll" in groups[0]) == bool(nll)
    for want, got in zip(pairs, groups, strict=True):
        prefix = "eval/" if "eval/loss" in want else ""
        for key in shared:
            assert got[prefix + key] == pytest.approx(want[prefix + key], rel=1e-5, abs=1e-7), (
                want["step"],
                key,
            )
    assert_close_weights(
        load_weights(tmp_path / "pairs" / "final"), load_weights(tmp_path / "groups" / "final"), 1e-5, 1e-6
    )


@pytest.mark.equivalence
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_every_layout_trains_groups_the_same(ws, tmp_path, layout) -> None:
    data = {"data.train": ws["group_train"], "data.eval": ws["group_eval"], **GROUPS, "loss.pairs": "all"}
    runner.train(toy_config(ws, tmp_path / "shared", **RUN, **data, **{"train.layout": "prefix_shared"}))
    runner.train(toy_config(ws, tmp_path / layout, **RUN, **data, **{"train.layout": layout}))
    assert_same_metrics(tmp_path / "shared", tmp_path / layout, atol=1e-6)


def test_a_listwise_loss_learns_the_ranking(ws, tmp_path) -> None:
    opts = {"data.train": ws["group_train"], "data.eval": ws["group_eval"], **GROUPS,
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
    opts = {**RUN, "train.micro_batch_size": 2, "data.groups": "true", "loss.pairs": "all",
            "data.train": ws["group_train"], "data.eval": ws["group_eval"]}  # fmt: skip
    runner.train(toy_config(ws, tmp_path / "one", **opts))
    launch(train_args(TORCHRUN, ws, tmp_path / "two", strategy, {**opts, **extra}))
    assert_same_metrics(tmp_path / "one", tmp_path / "two", atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"loss.type": "multi_negative"}, "loss.type: 'multi_negative' is listwise"),
    ],
)
def test_what_groups_do_not_do_yet_is_refused(overrides, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        checked_config(None, overrides)


def test_lora_trains_groups_against_its_adapters_off_self(ws, tmp_path) -> None:
    opts = {"data.train": ws["group_train"], "data.eval": ws["group_eval"], **GROUPS, "loss.type": "plackett_luce",
            "lora.rank": 4, "train.max_steps": 2, "train.eval_at_start": True, "optim.lr": 1e-2}  # fmt: skip
    runner.train(toy_config(ws, tmp_path, **opts))
    rows = logged_metrics(tmp_path)
    # The B matrices start at zero: policy == reference at first, then the adapters move the policy away.
    assert rows[0]["eval/loss"] == pytest.approx(math.log(24), rel=1e-6)
    assert rows[1]["loss"] == pytest.approx(math.log(24), rel=1e-6)
    assert [r for r in rows if "eval/loss" in r][-1]["eval/loss"] != pytest.approx(math.log(24), rel=1e-6)


def test_best_response_nll_is_the_top_scored_responses_per_token_nll() -> None:
    import torch

    from preftune.losses import GroupLogps
    from preftune.training.objective import best_response_nll

    # Group 0: scores 2, 2, 1 -> the two tied tops, per-token NLL 6/3 and 4/2 -> 2; group 1: the second, 6/4.
    logps = GroupLogps(
        policy=torch.tensor([-6.0, -4.0, -9.0, -5.0, -6.0]), ref=None, tokens=torch.tensor([3, 2, 3, 5, 4]),
        scores=torch.tensor([2.0, 2.0, 1.0, 0.0, 1.0]), group=torch.tensor([0, 0, 0, 1, 1]), num_groups=2,
    )  # fmt: skip
    assert best_response_nll(logps).tolist() == pytest.approx([2.0, 1.5])
