"""The loss of a row of K scored responses (listwise variants; every pairwise variant over the row's pairs) and
pair rows against the pairwise variants bit for bit, against closed-form numbers worked out by hand.

As in tests/test_losses.py, expected values are written as the closed form of each number (math module,
scalars) and tensors are float64, so rel=1e-9 checks the formula rather than rounding.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from preftune.config import ConfigError, LossConfig
from preftune.losses import (
    LOSSES,
    LossState,
    PairLogps,
    ResponseLogps,
    RowLossOutput,
    compute_loss,
    compute_pair_loss,
    expand_pairs,
)
from toy_env import checked_config

PAIRWISE = [name for name, spec in LOSSES.items() if not spec.listwise]
LISTWISE = [name for name, spec in LOSSES.items() if spec.listwise]


def lse(*v: float) -> float:
    return math.log(sum(math.exp(x) for x in v))


def softplus(v: float) -> float:
    """-ls(-v) = log(1 + e^v); -ls(v) is softplus(-v)."""
    return math.log1p(math.exp(v))


def groups(
    policy: list[float],
    ref: list[float] | None,
    scores: list[float],
    group: list[int],
    tokens: list[float] | None = None,
    dtype: torch.dtype = torch.float64,
) -> ResponseLogps:
    return ResponseLogps(
        policy=torch.tensor(policy, dtype=dtype),
        ref=None if ref is None else torch.tensor(ref, dtype=dtype),
        tokens=torch.tensor(tokens or [1.0] * len(policy)),
        scores=torch.tensor(scores, dtype=torch.float64),
        row=torch.tensor(group),
        num_rows=max(group) + 1,
    )


def run(name: str, logps: ResponseLogps, state: LossState | None = None, **cfg: Any) -> RowLossOutput:
    return compute_loss(logps, LossConfig(type=name, **cfg), state)


# One group of K = 3 with beta = 0.1: h = policy - ref = [2, -1, 0.5] -> z = beta h = [0.2, -0.1, 0.05];
# scores [3, 1, 2], so the ranking is response 0 (z 0.2), then 2 (z 0.05), then 1 (z -0.1).
K3 = {
    "policy": [-10.0, -15.0, -11.0],
    "ref": [-12.0, -14.0, -11.5],
    "scores": [3.0, 1.0, 2.0],
    "group": [0, 0, 0],
}
Z = [0.2, -0.1, 0.05]

# Two groups in one micro-batch, S = 7: group 0 is K3; group 1 (responses 3..6) has K = 4 with a tie at the
# bottom, scores [0.5, 2, 0.5, 1], h = [1, -2, 3, 0.5].
TWO = {
    "policy": [-10.0, -15.0, -11.0, -6.0, -9.0, -5.0, -8.0],
    "ref": [-12.0, -14.0, -11.5, -7.0, -7.0, -8.0, -8.5],
    "scores": [3.0, 1.0, 2.0, 0.5, 2.0, 0.5, 1.0],
    "group": [0, 0, 0, 1, 1, 1, 1],
    "tokens": [4.0, 5.0, 6.0, 3.0, 2.0, 7.0, 5.0],
}
# Every (better, worse) pair of TWO by hand; (3, 5) is tied and is no pair.
ALL_PAIRS = [(0, 1), (0, 2), (2, 1), (4, 3), (4, 5), (4, 6), (6, 3), (6, 5)]


def pair_logps(x: ResponseLogps, pairs: list[tuple[int, int]]) -> PairLogps:
    i, j = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    assert x.ref is not None
    return PairLogps(x.policy[i], x.policy[j], x.ref[i], x.ref[j], x.tokens[i], x.tokens[j])


# ---------------------------------------------------------------- listwise at a hand point


def test_plackett_luce_k3_point() -> None:
    out = run("plackett_luce", groups(**K3))
    # -log(e^.2 / (e^.2 + e^.05 + e^-.1)) - log(e^.05 / (e^.05 + e^-.1)) - log(e^-.1 / e^-.1)
    expected = (lse(0.2, 0.05, -0.1) - 0.2) + (lse(0.05, -0.1) - 0.05) + 0.0
    assert out.losses.tolist() == pytest.approx([expected], rel=1e-9)
    assert out.rewards.tolist() == pytest.approx(Z, rel=1e-9)


def test_multi_negative_k3_point() -> None:
    out = run("multi_negative", groups(**K3))
    # -log softmax of [0.2 (best), -0.1, 0.05] at the best
    assert out.losses.tolist() == pytest.approx([lse(0.2, -0.1, 0.05) - 0.2], rel=1e-9)
    assert out.rewards.tolist() == pytest.approx(Z, rel=1e-9)


def test_plackett_luce_ties_share_a_rank() -> None:
    # Rule: equal scores form one rank; each member's denominator is its rank and every lower rank.
    top_tie = run("plackett_luce", groups(**{**K3, "scores": [2.0, 2.0, 1.0]}))
    # k = 0 and k = 1 both over {0, 1, 2}; k = 2 over {2} alone.
    expected = (lse(0.2, -0.1, 0.05) - 0.2) + (lse(0.2, -0.1, 0.05) + 0.1) + 0.0
    assert top_tie.losses.tolist() == pytest.approx([expected], rel=1e-9)
    bottom_tie = run("plackett_luce", groups(**{**K3, "scores": [2.0, 1.0, 1.0]}))
    # k = 0 over {0, 1, 2}; k = 1 and k = 2 both over {1, 2}: the last rank is no longer a free log 1.
    expected = (lse(0.2, -0.1, 0.05) - 0.2) + (lse(-0.1, 0.05) + 0.1) + (lse(-0.1, 0.05) - 0.05)
    assert bottom_tie.losses.tolist() == pytest.approx([expected], rel=1e-9)


def test_multi_negative_ties_for_best_take_turns() -> None:
    # Rule: each response tied for the top is the best in turn, against the lower ones only; mean over them.
    out = run("multi_negative", groups(**{**K3, "scores": [2.0, 2.0, 1.0]}))
    expected = ((lse(0.2, 0.05) - 0.2) + (lse(-0.1, 0.05) + 0.1)) / 2
    assert out.losses.tolist() == pytest.approx([expected], rel=1e-9)


def test_policy_equal_to_reference_closed_forms() -> None:
    same = [-10.0, -15.0, -11.0, -6.0, -9.0, -5.0, -8.0]
    x = groups(**{**TWO, "ref": same, "policy": same})
    # plackett_luce at z = 0: sum_k log n_k, n_k = #{j : s_j <= s_k}.
    # Group 0, distinct scores: n = [3, 1, 2] -> log 3! ; group 1, scores [.5, 2, .5, 1]: n = [2, 4, 2, 3].
    pl = run("plackett_luce", x)
    assert pl.losses.tolist() == pytest.approx([math.log(6), 2 * math.log(2) + math.log(4) + math.log(3)])
    # multi_negative at z = 0: log(1 + K - m), m tied for the top: log 3 and log 4.
    mn = run("multi_negative", x)
    assert mn.losses.tolist() == pytest.approx([math.log(3), math.log(4)], rel=1e-9)
    assert pl.rewards.tolist() == mn.rewards.tolist() == [0.0] * 7


# ---------------------------------------------------------------- K = 2 is the pairwise loss


@pytest.mark.parametrize("name", [*LISTWISE, "sigmoid"])
@pytest.mark.parametrize("pairs", ["all", "best_vs_rest", "best_vs_worst"])
def test_k2_is_sigmoid_dpo_exactly(name: str, pairs: str) -> None:
    # Two groups of two; in the second the better response comes second in sequence order.
    x = groups([-10.0, -15.0, -9.0, -4.0], [-12.0, -14.0, -7.0, -5.0], [1.0, 0.0, 0.0, 5.0], [0, 0, 1, 1])
    out = run(name, x, pairs=pairs)
    # sigmoid DPO on (better, worse): -ls(z_better - z_worse) with z = [0.2, -0.1, -0.2, 0.1].
    expected = [softplus(-(0.2 - -0.1)), softplus(-(0.1 - -0.2))]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-9)
    pairwise = compute_pair_loss(pair_logps(x, [(0, 1), (3, 2)]), LossConfig(type="sigmoid"))
    assert out.losses.tolist() == pytest.approx(pairwise.losses.tolist(), rel=1e-12)


@pytest.mark.parametrize("name", PAIRWISE)
@pytest.mark.parametrize("pairs", ["all", "best_vs_rest", "best_vs_worst"])
def test_k2_every_pairwise_variant_is_itself(name: str, pairs: str) -> None:
    x = groups(
        [-10.0, -15.0, -9.0, -4.0],
        [-12.0, -14.0, -7.0, -5.0],
        [1.0, 0.0, 0.0, 5.0],
        [0, 0, 1, 1],
        [4, 5, 3, 6],
    )
    out = run(name, x, pairs=pairs, pair_weighting="gap")  # one pair per group: its weight divides out
    pairwise = compute_pair_loss(pair_logps(x, [(0, 1), (3, 2)]), LossConfig(type=name))
    assert out.losses.tolist() == pytest.approx(pairwise.losses.tolist(), rel=1e-12)


@pytest.mark.parametrize("cfg", [{"type": n} for n in PAIRWISE] + [{"type": "sigmoid,sft", "wpo": True}])
def test_pair_rows_give_the_pairwise_numbers_bit_for_bit(cfg: dict[str, Any]) -> None:
    """B pair rows as a batch numbers them (B chosen, then B rejected), float32 at random: the row loss, each
    response's reward, a mixture's terms and WPO's weights are the very numbers the variant gives the pairs, so
    a pair run logs what it logged before rows of K responses shared its path."""
    gen = torch.Generator().manual_seed(7)
    b = 6
    policy, ref = -80 * torch.rand(2 * b, generator=gen), -80 * torch.rand(2 * b, generator=gen)
    tokens = torch.randint(1, 40, (2 * b,), generator=gen).float()
    aligned = -torch.rand(2 * b, generator=gen)
    x = ResponseLogps(policy, ref, tokens, torch.tensor([1.0] * b + [0.0] * b, dtype=torch.float64),
                      torch.arange(b).repeat(2), b, aligned)  # fmt: skip
    pairs = PairLogps(
        policy[:b], policy[b:], ref[:b], ref[b:], tokens[:b], tokens[b:], aligned[:b], aligned[b:]
    )
    loss = LossConfig(**cfg)
    rows, pairwise = compute_loss(x, loss, LossState()), compute_pair_loss(pairs, loss, LossState())
    assert torch.equal(rows.losses, pairwise.losses)
    assert torch.equal(rows.rewards, torch.cat([pairwise.chosen_rewards, pairwise.rejected_rewards]))
    assert rows.terms.keys() == pairwise.terms.keys()
    for name, term in pairwise.terms.items():
        assert torch.equal(rows.terms[name], term), name
    assert (rows.weights is None) == (pairwise.weights is None)
    if pairwise.weights is not None:
        assert rows.weights is not None and torch.equal(rows.weights, pairwise.weights)


# ---------------------------------------------------------------- pairwise variants over response pairs


def test_expand_pairs_by_selection_and_ties_never() -> None:
    x = groups(**TWO)
    for selection, expected in [
        ("all", ALL_PAIRS),
        ("best_vs_rest", [(0, 1), (0, 2), (4, 3), (4, 5), (4, 6)]),
        ("best_vs_worst", [(0, 1), (4, 3), (4, 5)]),  # group 1's bottom is a tie: both are worst
    ]:
        i, j = expand_pairs(x, selection)
        assert list(zip(i.tolist(), j.tolist(), strict=True)) == expected, selection
    with pytest.raises(ValueError, match=r"loss\.pairs: unknown"):
        expand_pairs(x, "nope")


@pytest.mark.parametrize("name", PAIRWISE)
def test_all_pairs_uniform_is_the_mean_of_the_pairwise_loss(name: str) -> None:
    x = groups(**TWO)
    out = run(name, x, pairs="all")
    # The pairwise function itself on the hand-listed pairs (one batch, so bco_pair's mean sees the same).
    pairwise = compute_pair_loss(pair_logps(x, ALL_PAIRS), LossConfig(type=name)).losses.tolist()
    expected = [sum(pairwise[:3]) / 3, sum(pairwise[3:]) / 5]
    assert out.losses.tolist() == pytest.approx(expected, rel=1e-9)
    # Each response's reward is the variant's own, whichever side of a pair it is on.
    single = compute_pair_loss(pair_logps(x, ALL_PAIRS), LossConfig(type=name))
    for p, (i, j) in enumerate(ALL_PAIRS):
        assert out.rewards[i].item() == pytest.approx(single.chosen_rewards[p].item(), rel=1e-9)
        assert out.rewards[j].item() == pytest.approx(single.rejected_rewards[p].item(), rel=1e-9)


def test_wpo_weighs_each_expanded_pair_by_its_own_responses() -> None:
    """loss.wpo over groups: pair (i, j) carries exp(a_i + a_j), as the same pair would on pair data."""
    aligned = [0.1, -0.4, -0.2, -0.3, 0.5, -1.0, -0.6]  # a per response, made up
    x = dataclasses.replace(groups(**TWO), aligned=torch.tensor(aligned, dtype=torch.float64))
    out = run("sigmoid", x, pairs="all", wpo=True)
    plain = compute_pair_loss(pair_logps(x, ALL_PAIRS), LossConfig(type="sigmoid")).losses.tolist()
    w = [min(1.0, math.exp(aligned[i] + aligned[j])) for i, j in ALL_PAIRS]
    assert max(math.exp(aligned[i] + aligned[j]) for i, j in ALL_PAIRS) > 1  # the cap acts on one pair
    weighted = [wp * lp for wp, lp in zip(w, plain, strict=True)]
    assert out.losses.tolist() == pytest.approx([sum(weighted[:3]) / 3, sum(weighted[3:]) / 5], rel=1e-9)
    assert torch.equal(out.rewards, run("sigmoid", x, pairs="all").rewards)  # rewards stay unweighted


def test_gap_weighting_point() -> None:
    # Group K3, all pairs, sigmoid: (0,1) gap 2, z gap 0.3; (0,2) gap 1, z gap 0.15; (2,1) gap 1, z gap 0.15.
    out = run("sigmoid", groups(**K3), pairs="all", pair_weighting="gap")
    expected = (2 * softplus(-0.3) + softplus(-0.15) + softplus(-0.15)) / 4
    assert out.losses.tolist() == pytest.approx([expected], rel=1e-9)
    uniform = run("sigmoid", groups(**K3), pairs="all")
    assert uniform.losses.tolist() == pytest.approx([(softplus(-0.3) + 2 * softplus(-0.15)) / 3], rel=1e-9)


def test_tied_scores_make_no_pair_and_an_all_tied_group_is_refused() -> None:
    # Scores [1, 1, 0]: pairs (0, 2) and (1, 2) only; z gaps 0.2 - 0.05 = 0.15 and -0.1 - 0.05 = -0.15.
    out = run("sigmoid", groups(**{**K3, "scores": [1.0, 1.0, 0.0]}), pairs="all")
    assert out.losses.tolist() == pytest.approx([(softplus(-0.15) + softplus(0.15)) / 2], rel=1e-9)
    with pytest.raises(ValueError, match=r"rows \[0\] of the batch have no two responses"):
        run("sigmoid", groups(**{**K3, "scores": [1.0, 1.0, 1.0]}))


def test_reference_free_pairwise_runs_without_reference_and_listwise_refuses() -> None:
    x = groups(**{**TWO, "ref": None})
    assert torch.isfinite(run("simpo", x, pairs="all").losses).all()
    for name in ("sigmoid", *LISTWISE):
        with pytest.raises(ValueError, match=f"'{name}' needs reference log-probs"):
            run(name, x)


# ---------------------------------------------------------------- gradients, dtypes, the seams


@pytest.mark.parametrize("name", [*LISTWISE, *PAIRWISE])
def test_gradients_flow_and_rewards_are_detached(name: str) -> None:
    base = groups(**TWO)
    policy = base.policy.clone().requires_grad_(True)
    out = run(name, dataclasses.replace(base, policy=policy), pairs="all")
    assert out.losses.shape == (2,) and out.rewards.shape == (7,)
    out.losses.mean().backward()
    assert policy.grad is not None and torch.isfinite(policy.grad).all() and (policy.grad != 0).any()
    assert not out.rewards.requires_grad


def test_plackett_luce_gradient_closed_form() -> None:
    # d/dz_k of the K3 loss = sum over the terms whose denominator holds k of k's softmax share there, minus 1
    # for k's own term. Response 1 (the last rank) is in every denominator, and its own term log(e^z1 / e^z1)
    # is constant: d/dz_1 = p(1 | {0,1,2}) + p(1 | {2,1}) > 0, so descent lowers the worst response.
    x = groups(**K3)
    policy = x.policy.clone().requires_grad_(True)
    run("plackett_luce", dataclasses.replace(x, policy=policy)).losses.sum().backward()
    d1 = math.exp(-0.1 - lse(0.2, 0.05, -0.1)) + math.exp(-0.1 - lse(0.05, -0.1))
    # Response 0 (the top) is in one denominator and has its own term: p(0 | {0,1,2}) - 1 < 0.
    d0 = math.exp(0.2 - lse(0.2, 0.05, -0.1)) - 1
    assert policy.grad is not None
    assert policy.grad[1].item() == pytest.approx(0.1 * d1, rel=1e-9)  # dz/dpolicy = beta
    assert policy.grad[0].item() == pytest.approx(0.1 * d0, rel=1e-9)


@pytest.mark.parametrize("name", ["plackett_luce", "multi_negative", "sigmoid"])
def test_float32_inputs_keep_dtype(name: str) -> None:
    out = run(name, groups(**TWO, dtype=torch.float32), pairs="all")
    ref = run(name, groups(**TWO), pairs="all")
    assert out.losses.dtype == out.rewards.dtype == torch.float32
    torch.testing.assert_close(out.losses.double(), ref.losses, rtol=1e-5, atol=1e-6)


def test_bco_pair_state_moves_once_per_micro_batch() -> None:
    state = LossState()
    run("bco_pair", groups(**TWO), state, pairs="all")
    assert state.values["count"] == 2 * len(ALL_PAIRS)  # every pair's two rewards; the reward read adds none


def test_pairwise_compute_pair_loss_refuses_a_listwise_name() -> None:
    x = pair_logps(groups(**K3), [(0, 1)])
    with pytest.raises(ValueError, match="'plackett_luce' is listwise"):
        compute_pair_loss(x, LossConfig(type="plackett_luce"))


def test_config_keys_are_validated_by_name() -> None:
    assert checked_config(None, {}).loss.pairs == "best_vs_worst"
    assert checked_config(None, {}).loss.pair_weighting == "uniform"
    cfg = checked_config(None, {"loss.pairs": "all", "loss.pair_weighting": "gap"})
    assert (cfg.loss.pairs, cfg.loss.pair_weighting) == ("all", "gap")
    with pytest.raises(
        ConfigError, match=r"loss\.pairs: 'some' is not one of all, best_vs_rest, best_vs_worst"
    ):
        checked_config(None, {"loss.pairs": "some"})
    with pytest.raises(ConfigError, match=r"loss\.pair_weighting: 'rank' is not one of uniform, gap"):
        checked_config(None, {"loss.pair_weighting": "rank"})
    # A listwise loss.type trains any rows (on a pair it is sigmoid DPO); data.groups is an accepted no-op.
    assert checked_config(None, {"loss.type": "plackett_luce"}).loss.type == "plackett_luce"
    assert checked_config(None, {"loss.type": "plackett_luce", "data.groups": "true"}).data.groups
    # WPO weighs pairs: refused for a listwise type; LD-DPO's shared length is a pair's: refused for one too.
    with pytest.raises(ConfigError, match=r"loss\.wpo: .*listwise loss\.type 'plackett_luce' has no pairs"):
        checked_config(None, {"loss.type": "plackett_luce", "loss.wpo": "true"})
    assert checked_config(None, {"loss.pairs": "all", "loss.wpo": "true"}).loss.wpo
    with pytest.raises(ConfigError, match=r"loss\.ld_alpha: .*listwise loss\.type 'plackett_luce' has none"):
        checked_config(None, {"loss.type": "plackett_luce", "loss.ld_alpha": "0.5"})
