"""The rest of the DPO family: f-divergence scores, AOT, TRL's sft term and weighted mixtures, at points worked
out by hand (as tests/test_losses.py: closed forms from the math module, float64 tensors), plus the config's
refusals and short training runs that show each composes with the trainer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from preftune.config import LossConfig
from preftune.errors import ConfigError
from preftune.losses import LossState, compute_pair_loss, get_loss
from preftune.training import runner
from test_losses import LN2, point, softplus
from test_losses import pairs as make_pairs
from toy_env import assert_same_metrics, logged_metrics, toy_config

# POINT of test_losses: a = 2, b = -1, lc = 4, lr = 5; beta = 0.1.
E = math.e


def loss_at_point(**cfg: object) -> float:
    return compute_pair_loss(point(), LossConfig(**cfg)).losses.item()  # type: ignore[arg-type]


# ---------------------------------------------------------------- f-divergences


@pytest.mark.parametrize(
    ("kind", "h"),
    [
        ("forward_kl", (1 - E**-2) - (1 - E)),  # f'(t) = 1 - 1/t
        ("js", -softplus(-2.0) + softplus(1.0)),  # log 2 + ls(u): ls(2) - ls(-1), the log 2 cancels
        ("alpha", 2 * (1 - E**-1) + 2 * (E**0.5 - 1)),  # a = 0.5: (t^-0.5 - 1) / -0.5 at u = 2 and u = -1
    ],
)
def test_f_divergence_scores_replace_the_log_ratios(kind: str, h: float) -> None:
    out = compute_pair_loss(point(), LossConfig(f_divergence=kind))  # type: ignore[arg-type]
    assert out.losses.item() == pytest.approx(softplus(-0.1 * h), rel=1e-9)
    # Rewards stay beta times the log-ratios, as TRL logs them.
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == pytest.approx((0.2, -0.1), rel=1e-9)
    assert loss_at_point(type="hinge", f_divergence=kind) == pytest.approx(max(0.0, 1 - 0.1 * h), rel=1e-9)


def test_f_divergence_per_token_forms_divide_the_scores() -> None:
    # ipo_average (TRL's IPO) and sigmoid_norm divide each response's score by its length: js scores here.
    sc, sr = math.log(2) - softplus(-2.0), math.log(2) - softplus(1.0)
    h = sc / 4 - sr / 5
    assert loss_at_point(type="ipo", ipo_average=True, f_divergence="js") == pytest.approx(
        (h - 5) ** 2, rel=1e-9
    )
    assert loss_at_point(type="sigmoid_norm", f_divergence="js") == pytest.approx(
        softplus(-0.1 * h), rel=1e-9
    )


def test_reverse_kl_and_alpha_one_are_plain_dpo_exactly() -> None:
    plain = compute_pair_loss(point(), LossConfig()).losses
    for cfg in (LossConfig(f_divergence="reverse_kl"), LossConfig(f_divergence="alpha", f_alpha=1.0)):
        assert torch.equal(compute_pair_loss(point(), cfg).losses, plain)


def test_every_f_divergence_is_zero_at_the_reference() -> None:
    at_ref = point(rc=[-10.0], rr=[-15.0])
    for kind in ("forward_kl", "js", "alpha"):
        assert compute_pair_loss(at_ref, LossConfig(f_divergence=kind)).losses.item() == pytest.approx(LN2)  # type: ignore[arg-type]


# ---------------------------------------------------------------- AOT

# pc - pr = [1, -2, 0.5], rc - rr = [0, 3, -1]; a = pc - rc = [0, -4, 1.5], b = pr - rr = [-1, 1, 0].
AOT = make_pairs(
    pc=[-10.0, -12.0, -9.5], pr=[-11.0, -10.0, -10.0], rc=[-10.0, -8.0, -11.0], rr=[-10.0, -11.0, -10.0]
)


def test_aot_matches_sorted_log_prob_gaps() -> None:
    # sort(pc - pr) = [-2, 0.5, 1], sort(rc - rr) = [-1, 0, 3]: d = [-1, 0.5, -2].
    out = compute_pair_loss(AOT, LossConfig(type="aot"))
    assert out.losses.tolist() == pytest.approx([softplus(0.1), softplus(-0.05), softplus(0.2)], rel=1e-9)
    assert out.chosen_rewards.tolist() == pytest.approx([0.0, -0.4, 0.15], abs=1e-12)


def test_aot_unpaired_matches_sorted_log_ratios() -> None:
    # sort(a) = [-4, 0, 1.5], sort(b) = [-1, 0, 1]: d = [-3, 0, 0.5].
    out = compute_pair_loss(AOT, LossConfig(type="aot_unpaired"))
    assert out.losses.tolist() == pytest.approx([softplus(0.3), LN2, softplus(-0.05)], rel=1e-9)


def test_aot_of_one_pair_is_dpo() -> None:
    for name in ("aot", "aot_unpaired"):
        assert loss_at_point(type=name) == pytest.approx(softplus(-0.3), rel=1e-12)


# ---------------------------------------------------------------- sft and mixtures


def test_sft_is_token_weighted_over_the_micro_batch() -> None:
    two = make_pairs(pc=[-6.0, -1.0], pr=[-5.0, -5.0], lc=[3.0, 1.0], lr=[2.0, 2.0])
    out = compute_pair_loss(two, LossConfig(type="sft"))
    # (6 + 1) / (3 + 1) for both pairs; loss.nll_coef's per-pair means would be 2 and 1 (mean 1.5).
    assert out.losses.tolist() == pytest.approx([1.75, 1.75], rel=1e-12)
    assert get_loss("sft").reference_free and get_loss("sft").reports_nll


def test_mixture_is_the_weighted_sum_and_keeps_each_term() -> None:
    cfg = LossConfig(type="sigmoid,bco_pair,sft", weights=[0.8, 0.2, 1.0])
    out = compute_pair_loss(point(), cfg, LossState())
    sigmoid = softplus(-0.3)
    bco = 2 * softplus(-0.15)  # d = mean(0.2, -0.1) = 0.05: -ls(0.2 - 0.05) - ls(-(-0.1 - 0.05))
    sft = 10 / 4
    assert out.losses.item() == pytest.approx(0.8 * sigmoid + 0.2 * bco + sft, rel=1e-9)
    assert {k: v.item() for k, v in out.terms.items()} == pytest.approx(
        {"sigmoid": sigmoid, "bco_pair": bco, "sft": sft}, rel=1e-9
    )
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == pytest.approx((0.2, -0.1))
    spec = get_loss(cfg.type)
    assert not spec.reference_free and spec.reports_nll and not spec.f_divergence
    assert get_loss("simpo,sft").reference_free
    unweighted = compute_pair_loss(point(), LossConfig(type="sigmoid,sft")).losses.item()
    assert unweighted == pytest.approx(sigmoid + sft, rel=1e-9)


@pytest.mark.parametrize(
    ("overrides", "key", "message"),
    [
        ({"loss.type": "sigmoid,sft", "loss.weights": "1"}, "loss.weights", "1 weights for the 2 terms"),
        ({"loss.type": "sigmoid,sft", "loss.weights": "1,-1"}, "loss.weights", ">= 0"),
        ({"loss.type": "sigmoid,sigmoid"}, "loss.type", "names a loss twice"),
        ({"loss.type": "sigmoid,nope"}, "loss.type", "unknown loss 'nope'"),
        (
            {"loss.type": "sigmoid,plackett_luce"},
            "loss.type",
            "cannot be part of a mixture",
        ),
        (
            {"loss.type": "bco_pair", "loss.f_divergence": "js"},
            "loss.f_divergence",
            "no form for loss.type bco_pair",
        ),
        ({"loss.type": "aot", "loss.f_divergence": "alpha"}, "loss.f_divergence", "aot"),
        ({"loss.f_divergence": "kl"}, "loss.f_divergence", "not one of"),
    ],
)
def test_config_refuses_what_has_no_meaning(
    ws: dict[str, str], tmp_path: Path, overrides: dict, key: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: .*{message}"):
        toy_config(ws, tmp_path, **overrides)


# ---------------------------------------------------------------- in training


WORKSPACE = {"n_train": 16, "n_eval": 8}  # the sizes of this module's `ws` (tests/conftest.py)


def test_a_mixture_trains_and_logs_each_term(ws: dict[str, str], tmp_path: Path) -> None:
    runner.train(toy_config(ws, tmp_path, **{"loss.type": "sigmoid,sft", "loss.weights": "1,0.5"}))
    rows = logged_metrics(tmp_path)
    assert rows
    for row in rows:
        prefix = "eval/" if "eval/loss" in row else ""
        total, sigmoid, sft = (row[f"{prefix}{k}"] for k in ("loss", "loss/sigmoid", "loss/sft"))
        assert math.isfinite(total) and sft > 0
        assert total == pytest.approx(sigmoid + 0.5 * sft, rel=1e-5)


@pytest.mark.equivalence
def test_f_divergence_gives_every_layout_the_same_numbers(ws: dict[str, str], tmp_path: Path) -> None:
    opts = {"loss.f_divergence": "js", "loss.type": "sigmoid,hinge", "loss.weights": "0.7,0.3"}
    for layout in ("padded", "prefix_shared"):
        runner.train(toy_config(ws, tmp_path / layout, **opts, **{"train.layout": layout}))
    assert_same_metrics(tmp_path / "padded", tmp_path / "prefix_shared", atol=1e-6)


@pytest.mark.equivalence
def test_aot_sorts_within_each_micro_batch(ws: dict[str, str], tmp_path: Path) -> None:
    """The documented choice: a micro-batch of one pair is plain DPO; bigger micro-batches sort across pairs."""
    one = {"train.micro_batch_size": 1, "train.batch_size": 8}
    runner.train(toy_config(ws, tmp_path / "aot1", **one, **{"loss.type": "aot"}))
    runner.train(toy_config(ws, tmp_path / "dpo1", **one))
    assert_same_metrics(tmp_path / "dpo1", tmp_path / "aot1", atol=1e-6)
    runner.train(toy_config(ws, tmp_path / "aot8", **{"train.micro_batch_size": 8, "loss.type": "aot"}))
    first = logged_metrics(tmp_path / "aot8")[
        1
    ]  # after one update: the sort has moved the policy differently
    assert first["loss"] != pytest.approx(logged_metrics(tmp_path / "aot1")[1]["loss"], rel=1e-6)


def test_the_loss_options_compose_with_lora(ws: dict[str, str], tmp_path: Path) -> None:
    """LoRA's adapters-off reference under a mixture, an f-divergence, WPO and LD-DPO together: it starts at the
    reference (rewards 0, each term at its closed form) and trains."""
    opts = {"lora.rank": 4, "loss.type": "sigmoid,sft", "loss.weights": "1,0.1", "loss.f_divergence": "alpha",
            "loss.wpo": True, "loss.ld_alpha": 0.5, "optim.lr": 1e-2, "train.eval_at_start": True}  # fmt: skip
    runner.train(toy_config(ws, tmp_path, **opts))
    rows = logged_metrics(tmp_path)
    start = next(r for r in rows if "eval/loss" in r)
    assert start["eval/rewards/chosen"] == 0 and start["eval/loss/sigmoid"] == pytest.approx(LN2, rel=1e-6)
    train = [r for r in rows if "loss" in r]
    assert all(math.isfinite(r["loss"]) for r in train) and train[-1]["rewards/margins"] != 0
