"""Loss variants against closed-form numbers worked out by hand, plus registry and state behaviour.

Expected values are written as the closed form of each number (math module, scalars), never by calling
the library or re-typing its tensor code. Tensors are float64 so rel=1e-6 checks the formula, not
float32 rounding; a separate test covers low-precision inputs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from preftune.config import LossConfig
from preftune.losses import (
    LOSSES,
    LossOutput,
    LossState,
    PairLogps,
    compute_pair_loss,
    get_loss,
    register_loss,
)

LN2 = math.log(2)
# The built-in variants, written out: the registry must hold exactly these (a rename or a lost one fails here).
LOSS_TYPES = (
    "sigmoid", "ipo", "hinge", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard",
    "apo_zero", "apo_down", "discopop", "sigmoid_norm", "simpo", "orpo", "aot", "aot_unpaired", "sft",
)  # fmt: skip
LISTWISE_LOSSES = ("plackett_luce", "multi_negative")  # whole rows: tests/test_losses_rows.py
REFERENCE_FREE_LOSSES = ("simpo", "orpo", "sft")
REFERENCE_BASED = sorted(set(LOSS_TYPES) - set(REFERENCE_FREE_LOSSES))


def softplus(v: float) -> float:
    """-ls(-v) = log(1 + e^v); -ls(v) is softplus(-v)."""
    return math.log1p(math.exp(v))


def sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def pairs(
    pc: list[float],
    pr: list[float],
    rc: list[float] | None = None,
    rr: list[float] | None = None,
    lc: list[float] | None = None,
    lr: list[float] | None = None,
    dtype: torch.dtype = torch.float64,
) -> PairLogps:
    def t(v: list[float] | None) -> torch.Tensor | None:
        return None if v is None else torch.tensor(v, dtype=dtype)

    ones = [1.0] * len(pc)
    return PairLogps(
        policy_chosen=torch.tensor(pc, dtype=dtype),
        policy_rejected=torch.tensor(pr, dtype=dtype),
        ref_chosen=t(rc),
        ref_rejected=t(rr),
        chosen_tokens=torch.tensor(lc or ones),
        rejected_tokens=torch.tensor(lr or ones),
    )


def run(name: str, logps: PairLogps, state: LossState | None = None, **cfg: Any) -> LossOutput:
    return compute_pair_loss(logps, LossConfig(type=name, **cfg), state)


# The shared non-trivial point: pc=-10, rc=-12 -> a = 2; pr=-15, rr=-14 -> b = -1; h = a - b = 3;
# lc = 4, lr = 5. With beta = 0.1: beta*a = 0.2, beta*b = -0.1, beta*h = 0.3.
POINT = {"pc": [-10.0], "pr": [-15.0], "rc": [-12.0], "rr": [-14.0], "lc": [4.0], "lr": [5.0]}


def point(**overrides: list[float] | None) -> PairLogps:
    return pairs(**{**POINT, **overrides})  # type: ignore[arg-type]


# ---------------------------------------------------------------- registry


def test_registry_matches_config() -> None:
    assert set(LOSSES) == set(LOSS_TYPES) | set(LISTWISE_LOSSES)
    assert {name for name, spec in LOSSES.items() if spec.listwise} == set(LISTWISE_LOSSES)
    assert {name for name, spec in LOSSES.items() if spec.reference_free} == set(REFERENCE_FREE_LOSSES)
    assert all(spec.name == name for name, spec in LOSSES.items())


def test_every_variant_documents_its_formula() -> None:
    assert all(spec.fn.__doc__ and "loss" in spec.fn.__doc__ for spec in LOSSES.values())


def test_unknown_loss_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'nope'") as err:
        get_loss("nope")
    assert all(name in str(err.value) for name in LOSS_TYPES)
    with pytest.raises(ValueError, match="'nope'"):
        run("nope", point())


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_loss("sigmoid")(LOSSES["sigmoid"].fn)


@pytest.mark.parametrize("name", REFERENCE_BASED)
def test_reference_based_loss_without_reference_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=rf"'{name}' needs reference log-probs.*simpo, orpo"):
        run(name, point(rc=None, rr=None))


@pytest.mark.parametrize("name", sorted(REFERENCE_FREE_LOSSES))
def test_reference_free_loss_ignores_reference(name: str) -> None:
    without = run(name, point(rc=None, rr=None))
    with_ref = run(name, point())
    torch.testing.assert_close(without.losses, with_ref.losses)


# ---------------------------------------------------------------- policy == reference


# policy == reference: a = b = h = 0, beta = 0.1 so 1/(2 beta) = 5, eps = 0, tau = 0.05.
AT_REFERENCE = {
    "sigmoid": LN2,  # -ls(0) = ln 2
    "robust": LN2,  # eps = 0: (-ls(0)) / 1
    "ipo": 25.0,  # (0 - 5)^2
    "hinge": 1.0,  # relu(1 - 0)
    # e = 1e-3: 0.5 (ln 0.5 - ln 0.999) + 0.5 (ln 0.5 - ln 0.001)
    "exo_pair": 0.5 * (math.log(0.5) - math.log(0.999)) + 0.5 * (math.log(0.5) - math.log(0.001)),
    "nca_pair": 2 * LN2,  # ln2 + 0.5 ln2 + 0.5 ln2
    "bco_pair": 2 * LN2,  # rewards all 0 -> d = 0 -> ln2 + ln2
    "sppo_hard": 50.0,  # (0 - 5)^2 + (0 + 5)^2
    "apo_zero": 1.0,  # (1 - 0.5) + 0.5
    "apo_down": 1.0,  # 0.5 + (1 - 0.5)
    "discopop": 0.5 * LN2 + 0.5,  # m = s(0) = 0.5: 0.5 * ln2 + 0.5 * e^0
    "sigmoid_norm": LN2,  # h_n = 0
    "aot": LN2,  # both sorted log-prob gaps are the same list: d = 0
    "aot_unpaired": LN2,  # sort(a) = sort(b) = [0, 0]
}


def test_at_reference_table_covers_every_reference_based_loss() -> None:
    assert set(AT_REFERENCE) == set(REFERENCE_BASED)


@pytest.mark.parametrize("name", REFERENCE_BASED)
def test_policy_equal_to_reference(name: str) -> None:
    # Non-zero, unequal log-probs and lengths so only a = b = 0 makes the numbers simple.
    logps = pairs(pc=[-7.0, -3.5], pr=[-9.0, -20.0], rc=[-7.0, -3.5], rr=[-9.0, -20.0], lc=[3, 2], lr=[5, 8])
    out = run(name, logps)
    assert out.losses.tolist() == pytest.approx([AT_REFERENCE[name]] * 2, rel=1e-6)
    assert out.chosen_rewards.tolist() == [0.0, 0.0]
    assert out.rejected_rewards.tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- one hand-computed point per variant


def test_sigmoid_point() -> None:
    out = run("sigmoid", point())
    # -ls(0.3) = log(1 + e^-0.3)
    assert out.losses.item() == pytest.approx(0.5543552444685271, rel=1e-6)
    assert out.losses.item() == pytest.approx(softplus(-0.3), rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.2, rel=1e-6)
    assert out.rejected_rewards.item() == pytest.approx(-0.1, rel=1e-6)


def test_cdpo_label_smoothing() -> None:
    out = run("sigmoid", point(), label_smoothing=0.1)
    # 0.9 * (-ls(0.3)) + 0.1 * (-ls(-0.3)) = 0.9 log(1 + e^-0.3) + 0.1 log(1 + e^0.3)
    assert out.losses.item() == pytest.approx(0.9 * softplus(-0.3) + 0.1 * softplus(0.3), rel=1e-6)
    # Smoothing pulls the loss of a correctly ranked pair up: log(1+e^0.3) > log(1+e^-0.3).
    assert out.losses.item() > run("sigmoid", point()).losses.item()


def test_ipo_sum_and_average() -> None:
    summed = run("ipo", point())
    # h = 3: (3 - 5)^2 = 4
    assert summed.losses.item() == pytest.approx(4.0, rel=1e-6)
    averaged = run("ipo", point(), ipo_average=True)
    # h = a/lc - b/lr = 2/4 - (-1)/5 = 0.7: (0.7 - 5)^2 = 18.49
    assert averaged.losses.item() == pytest.approx(18.49, rel=1e-6)
    # Rewards stay on summed log-probs: 0.1 * 2, 0.1 * -1.
    assert averaged.chosen_rewards.item() == pytest.approx(0.2, rel=1e-6)
    assert averaged.rejected_rewards.item() == pytest.approx(-0.1, rel=1e-6)


def test_hinge_point() -> None:
    # relu(1 - 0.3) = 0.7; with beta = 0.5, relu(1 - 1.5) = 0.
    assert run("hinge", point()).losses.item() == pytest.approx(0.7, rel=1e-6)
    assert run("hinge", point(), beta=0.5).losses.item() == 0.0


def test_robust_point_and_eps_zero_is_sigmoid() -> None:
    out = run("robust", point(), label_smoothing=0.1)
    # (0.9 * -ls(0.3) + 0.1 * ls(-0.3)) / 0.8 = (0.9 log(1+e^-0.3) - 0.1 log(1+e^0.3)) / 0.8
    assert out.losses.item() == pytest.approx((0.9 * softplus(-0.3) - 0.1 * softplus(0.3)) / 0.8, rel=1e-6)
    many = pairs(pc=[-1.0, -30.0, -4.0], pr=[-2.0, -3.0, -4.0], rc=[-5.0, -2.0, -3.0], rr=[-1.0, -9.0, -6.0])
    torch.testing.assert_close(run("robust", many).losses, run("sigmoid", many).losses)


def test_exo_pair_point() -> None:
    out = run("exo_pair", point(), label_smoothing=0.2)
    # z = 0.3, e = 0.2: s(0.3) (ls(0.3) - ln 0.8) + s(-0.3) (ls(-0.3) - ln 0.2)
    s = sig(0.3)
    expected = s * (math.log(s) - math.log(0.8)) + (1 - s) * (math.log(1 - s) - math.log(0.2))
    assert out.losses.item() == pytest.approx(expected, rel=1e-6)


def test_exo_pair_is_a_kl_with_zero_at_the_target_and_symmetric() -> None:
    # Minimum 0 where s(z) = 1 - e: z = log((1-e)/e) = log 4 for e = 0.2, i.e. h = 10 log 4 at beta 0.1.
    h = 10 * math.log(4)
    at_target = run("exo_pair", pairs(pc=[h], pr=[0.0], rc=[0.0], rr=[0.0]), label_smoothing=0.2)
    assert at_target.losses.item() == pytest.approx(0.0, abs=1e-12)
    # Swapping chosen and rejected (h -> -h) together with the target (e -> 1 - e) is the same KL.
    forward = run("exo_pair", point(), label_smoothing=0.2)
    swapped = run("exo_pair", point(pc=[-15.0], pr=[-10.0], rc=[-14.0], rr=[-12.0]), label_smoothing=0.8)
    assert swapped.losses.item() == pytest.approx(forward.losses.item(), rel=1e-6)


def test_nca_pair_point() -> None:
    out = run("nca_pair", point())
    # -ls(0.2) - 0.5 ls(-0.2) - 0.5 ls(0.1) = log(1+e^-0.2) + 0.5 log(1+e^0.2) + 0.5 log(1+e^-0.1)
    expected = softplus(-0.2) + 0.5 * softplus(0.2) + 0.5 * softplus(-0.1)
    assert out.losses.item() == pytest.approx(expected, rel=1e-6)


def test_sppo_hard_point() -> None:
    # (2 - 5)^2 + (-1 + 5)^2 = 9 + 16 = 25
    assert run("sppo_hard", point()).losses.item() == pytest.approx(25.0, rel=1e-6)


def test_apo_zero_point() -> None:
    # (1 - s(0.2)) + s(-0.1)
    expected = (1 - sig(0.2)) + sig(-0.1)
    assert run("apo_zero", point()).losses.item() == pytest.approx(expected, rel=1e-6)


def test_apo_down_point() -> None:
    # s(0.2) + (1 - s(0.3))
    expected = sig(0.2) + (1 - sig(0.3))
    assert run("apo_down", point()).losses.item() == pytest.approx(expected, rel=1e-6)


def test_discopop_point() -> None:
    out = run("discopop", point(), discopop_tau=0.05)
    # z = 0.3, m = s(0.3 / 0.05) = s(6): (1 - s(6)) log(1 + e^-0.3) + s(6) e^-0.3
    expected = (1 - sig(6.0)) * softplus(-0.3) + sig(6.0) * math.exp(-0.3)
    assert out.losses.item() == pytest.approx(expected, rel=1e-6)


def test_discopop_stays_finite_far_from_the_reference() -> None:
    # z = -100: m = s(-2000) = 0, so the loss is -ls(-100) = log(1 + e^100) ~ 100; exp(100) alone overflows fp32.
    far = pairs(pc=[-1000.0], pr=[0.0], rc=[0.0], rr=[0.0], dtype=torch.float32)
    out = run("discopop", far)
    assert out.losses.item() == pytest.approx(100.0, rel=1e-6)


def test_sigmoid_norm_point() -> None:
    out = run("sigmoid_norm", point())
    # h_n = a/lc - b/lr = 2/4 - (-1)/5 = 0.7: -ls(0.07) = log(1 + e^-0.07)
    assert out.losses.item() == pytest.approx(softplus(-0.07), rel=1e-6)
    # Rewards 0.1 * 2/4 = 0.05 and 0.1 * -1/5 = -0.02.
    assert out.chosen_rewards.item() == pytest.approx(0.05, rel=1e-6)
    assert out.rejected_rewards.item() == pytest.approx(-0.02, rel=1e-6)
    smoothed = run("sigmoid_norm", point(), label_smoothing=0.1)
    assert smoothed.losses.item() == pytest.approx(0.9 * softplus(-0.07) + 0.1 * softplus(0.07), rel=1e-6)


def test_zero_length_responses_count_as_one_token() -> None:
    # lc = lr = 0 is clamped to 1, so h_n = h = 3: -ls(0.3).
    out = run("sigmoid_norm", point(lc=[0.0], lr=[0.0]))
    assert out.losses.item() == pytest.approx(softplus(-0.3), rel=1e-6)


def test_simpo_point() -> None:
    out = run("simpo", point(rc=None, rr=None), simpo_gamma=0.5)
    # pc/lc = -10/4 = -2.5, pr/lr = -15/5 = -3, h = 0.5; gamma/beta = 5; beta (h - 5) = -0.45:
    # -ls(-0.45) = log(1 + e^0.45)
    assert out.losses.item() == pytest.approx(softplus(0.45), rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(-0.25, rel=1e-6)
    assert out.rejected_rewards.item() == pytest.approx(-0.3, rel=1e-6)
    # Equal average log-probs: h = 0, loss = -ls(-gamma) = log(1 + e^0.5).
    tie = run("simpo", pairs(pc=[-6.0], pr=[-9.0], lc=[2], lr=[3]), simpo_gamma=0.5)
    assert tie.losses.item() == pytest.approx(softplus(0.5), rel=1e-6)
    smoothed = run("simpo", point(rc=None, rr=None), simpo_gamma=0.5, label_smoothing=0.1)
    assert smoothed.losses.item() == pytest.approx(0.9 * softplus(0.45) + 0.1 * softplus(-0.45), rel=1e-6)


def test_orpo_point() -> None:
    out = run("orpo", point(rc=None, rr=None))
    # Average log-probs -2.5 and -3, i.e. token probabilities p = e^-2.5 and q = e^-3.
    # log_odds = log[(p / (1-p)) / (q / (1-q))]; loss = 2.5 - 0.1 ls(log_odds) = 2.5 + 0.1 log(1 + e^-log_odds)
    p, q = math.exp(-2.5), math.exp(-3.0)
    log_odds = math.log((p / (1 - p)) / (q / (1 - q)))
    assert out.losses.item() == pytest.approx(2.5 + 0.1 * softplus(-log_odds), rel=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(-0.25, rel=1e-6)
    assert out.rejected_rewards.item() == pytest.approx(-0.3, rel=1e-6)
    # Equal averages: odds ratio 1, loss = -ac + beta ln 2 = 2 + 0.1 ln 2.
    tie = run("orpo", pairs(pc=[-4.0], pr=[-6.0], lc=[2], lr=[3]))
    assert tie.losses.item() == pytest.approx(2 + 0.1 * LN2, rel=1e-6)


def test_orpo_is_finite_for_certain_and_hopeless_responses() -> None:
    # Average log-prob 0 (probability 1) would put log(1 - 1) = -inf into the odds; -200 underflows exp.
    logps = PairLogps(
        policy_chosen=torch.tensor([0.0, -200.0], requires_grad=True),
        policy_rejected=torch.tensor([-1e-12, 0.0], requires_grad=True),
        ref_chosen=None,
        ref_rejected=None,
        chosen_tokens=torch.tensor([3, 1]),
        rejected_tokens=torch.tensor([2, 1]),
    )
    out = run("orpo", logps)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all()
    assert logps.policy_chosen.grad is not None and torch.isfinite(logps.policy_chosen.grad).all()
    assert logps.policy_rejected.grad is not None and torch.isfinite(logps.policy_rejected.grad).all()


# ---------------------------------------------------------------- bco_pair state


def test_bco_pair_single_batch() -> None:
    out = run("bco_pair", point())
    # Rewards 0.2 and -0.1 -> d = 0.05: -ls(0.2 - 0.05) - ls(-(-0.1 - 0.05)) = 2 log(1 + e^-0.15)
    assert out.losses.item() == pytest.approx(2 * softplus(-0.15), rel=1e-6)


def test_bco_pair_running_mean_over_batches() -> None:
    state = LossState()
    run("bco_pair", point(), state)
    # Batch 1 rewards {0.2, -0.1}: count 2, mean 0.05.
    assert state.state_dict() == pytest.approx({"count": 2.0, "mean": 0.05}, rel=1e-6)
    second = pairs(pc=[4.0, 0.0], pr=[2.0, -2.0], rc=[0.0, 0.0], rr=[0.0, 0.0])
    out = run("bco_pair", second, state)
    # Batch 2 rewards {0.4, 0.0, 0.2, -0.2} (sum 0.4): mean of all six = (0.1 + 0.4) / 6 = 1/12.
    d = 1 / 12
    assert state.state_dict() == pytest.approx({"count": 6.0, "mean": d}, rel=1e-6)
    # Pair 0: -ls(0.4 - d) - ls(-(0.2 - d)); pair 1: -ls(0 - d) - ls(-(-0.2 - d)).
    expected = [softplus(-(0.4 - d)) + softplus(0.2 - d), softplus(d) + softplus(-0.2 - d)]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-6)


def test_bco_pair_eval_reads_but_does_not_update() -> None:
    state = LossState()
    state.load_state_dict({"count": 10, "mean": 0.3})
    state.update = False
    out = run("bco_pair", point(), state)
    assert state.state_dict() == {"count": 10.0, "mean": 0.3}
    # d = 0.3 stays: -ls(0.2 - 0.3) - ls(-(-0.1 - 0.3)) = log(1 + e^0.1) + log(1 + e^-0.4)
    assert out.losses.item() == pytest.approx(softplus(0.1) + softplus(-0.4), rel=1e-6)


def test_bco_pair_state_round_trip() -> None:
    state = LossState()
    run("bco_pair", point(), state)
    restored = LossState()
    restored.load_state_dict(state.state_dict())
    assert restored.state_dict() == state.state_dict()
    nxt = pairs(pc=[1.0], pr=[-3.0], rc=[0.0], rr=[0.0])
    torch.testing.assert_close(run("bco_pair", nxt, restored).losses, run("bco_pair", nxt, state).losses)
    assert restored.state_dict() == state.state_dict()


def test_bco_pair_without_state_uses_a_fresh_one() -> None:
    first = run("bco_pair", point(), None)
    again = run("bco_pair", point(), None)
    torch.testing.assert_close(first.losses, again.losses)


# ---------------------------------------------------------------- gradients and dtypes


def test_sigmoid_gradient_signs() -> None:
    logps = PairLogps(
        policy_chosen=torch.tensor([-10.0, -3.0], requires_grad=True),
        policy_rejected=torch.tensor([-15.0, -1.0], requires_grad=True),
        ref_chosen=torch.tensor([-12.0, -3.0]),
        ref_rejected=torch.tensor([-14.0, -2.0]),
        chosen_tokens=torch.tensor([4, 2]),
        rejected_tokens=torch.tensor([5, 2]),
    )
    run("sigmoid", logps).losses.sum().backward()
    assert logps.policy_chosen.grad is not None and logps.policy_rejected.grad is not None
    assert (logps.policy_chosen.grad < 0).all()
    assert (logps.policy_rejected.grad > 0).all()
    # d/dpc [-ls(beta h)] = -beta s(-beta h); at h = 3: -0.1 s(-0.3).
    assert logps.policy_chosen.grad[0].item() == pytest.approx(-0.1 * sig(-0.3), rel=1e-5)


@pytest.mark.parametrize("name", LOSS_TYPES)
def test_losses_differentiable_rewards_detached(name: str) -> None:
    base = point()
    pc = base.policy_chosen.clone().requires_grad_(True)
    pr = base.policy_rejected.clone().requires_grad_(True)
    out = compute_pair_loss(
        dataclasses.replace(base, policy_chosen=pc, policy_rejected=pr), LossConfig(type=name)
    )
    out.losses.sum().backward()
    assert pc.grad is not None and torch.isfinite(pc.grad).all()
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    assert out.losses.shape == out.chosen_rewards.shape == out.rejected_rewards.shape == (1,)


@pytest.mark.parametrize("name", LOSS_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs_keep_dtype_and_compute_wide(name: str, dtype: torch.dtype) -> None:
    # bf16 holds these small integers exactly, so any gap to float64 comes from the math, not the inputs.
    low = pairs(**POINT, dtype=dtype)
    out = run(name, low)
    ref = run(name, point())
    assert out.losses.dtype == out.chosen_rewards.dtype == dtype
    assert out.losses.device == low.policy_chosen.device
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.losses.double(), ref.losses, rtol=tol, atol=tol)


# ---------------------------------------------------------------- WPO (loss.wpo), an option of every pairwise type


def _wpo_example() -> tuple[PairLogps, list[float]]:
    """Two pairs scored from hand-made logits; their WPO weights in closed form.

    Vocabulary of 2, hidden size 1, head weight [[0], [ln 3]]: a hidden state h gives logits [0, h ln 3].
    h = 1: p = (1/4, 3/4), sum p^2 = 10/16;  h = 2: p = (1/10, 9/10), sum p^2 = 82/100.
    Per token, log p(t) - log sum p^2:  h=1,t=1: ln(6/5);  h=2,t=0: ln(5/41);  h=2,t=1: ln(45/41).
    Pair 0: chosen = (h=1,t=1), (h=2,t=0): a_c = ln(6/41)/2; rejected = (h=1,t=1): a_r = ln(6/5)
            -> w = sqrt(6/41) * 6/5 = 0.459...
    Pair 1: chosen = (h=2,t=1): a_c = ln(45/41); rejected = (h=1,t=1): a_r = ln(6/5) -> w = 54/41 > 1.
    """
    from preftune.model.logps import chunked_token_logps_lse
    from preftune.model.responses import mean_aligned_logps

    hidden = torch.tensor([[1.0], [2.0], [2.0], [1.0], [1.0]])  # sequences: c0 c0 c1 r0 r1
    targets = torch.tensor([1, 0, 1, 1, 1])
    sequence = torch.tensor([0, 0, 1, 2, 3])
    weight = torch.tensor([[0.0], [math.log(3)]])
    token_logps, lse = chunked_token_logps_lse(hidden, weight, targets, chunk_size=2)
    aligned = mean_aligned_logps(token_logps, lse, sequence, torch.tensor([2.0, 1.0, 1.0, 1.0]))
    logps = dataclasses.replace(
        point(pc=[-10.0, -10.0], pr=[-15.0, -15.0], rc=[-12.0, -12.0], rr=[-14.0, -14.0], lc=None, lr=None),
        chosen_aligned=aligned[:2].double(),
        rejected_aligned=aligned[2:].double(),
    )
    return logps, [math.sqrt(6 / 41) * 6 / 5, 54 / 41]


def test_wpo_weight_from_hand_made_logits_matches_closed_form() -> None:
    logps, (w0, w1) = _wpo_example()
    plain = run("sigmoid", logps)
    capped = run("sigmoid", logps, wpo=True)  # default loss.wpo_clamp: min(1, w)
    free = run("sigmoid", logps, wpo=True, wpo_clamp=False)  # TRL 1.x: w unclamped
    assert capped.weights is not None and free.weights is not None and plain.weights is None
    assert capped.weights.tolist() == pytest.approx([w0, 1.0], rel=1e-6)
    assert free.weights.tolist() == pytest.approx([w0, w1], rel=1e-6)
    # Each pair's loss is the plain loss times its weight; rewards are the plain ones.
    assert capped.losses.tolist() == pytest.approx([w0 * softplus(-0.3), softplus(-0.3)], rel=1e-6)
    assert free.losses.tolist() == pytest.approx([w0 * softplus(-0.3), w1 * softplus(-0.3)], rel=1e-6)
    assert torch.equal(free.chosen_rewards, plain.chosen_rewards)


@pytest.mark.parametrize("name", LOSS_TYPES)
def test_wpo_gradient_is_the_weight_times_the_plain_gradient(name: str) -> None:
    """No gradient flows through w: d(w loss)/d logps = w d(loss)/d logps, and nothing reaches a_c, a_r."""
    logps, _ = _wpo_example()
    leaves = {
        key: getattr(logps, key).clone().requires_grad_(True)
        for key in ("policy_chosen", "policy_rejected", "chosen_aligned", "rejected_aligned")
    }
    weighted = dataclasses.replace(logps, **leaves)
    out = compute_pair_loss(weighted, LossConfig(type=name, wpo=True, wpo_clamp=False))
    assert out.weights is not None and not out.weights.requires_grad
    got = torch.autograd.grad(out.losses.sum(), list(leaves.values()), allow_unused=True)
    assert got[2] is None and got[3] is None
    plain_leaves = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items() if "policy" in k}
    plain = compute_pair_loss(dataclasses.replace(logps, **plain_leaves), LossConfig(type=name))
    # sum_k w_k loss_k with w held constant: per pair for most types; aot and sft mix pairs in each term.
    want = torch.autograd.grad(
        (out.weights * plain.losses).sum(), list(plain_leaves.values()), allow_unused=True
    )
    for g, w in zip(got[:2], want, strict=True):
        zero = torch.zeros_like(leaves["policy_chosen"])
        torch.testing.assert_close(
            g if g is not None else zero, w if w is not None else zero, rtol=1e-12, atol=1e-12
        )


def test_wpo_without_aligned_logps_is_refused() -> None:
    with pytest.raises(ValueError, match="want_aligned"):
        run("sigmoid", point(), wpo=True)
