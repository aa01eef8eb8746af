"""The training metrics of rows (pairs and rows of K scored responses) as sums: a hand-worked example, exact sums
over micro-batches, the rows at once against row by row; and reward ties: a margin within rounding of 0 is a tie,
counted as wrong whatever side of 0 the rounding fell on (so two BLAS kernels, or a live and a cached reference,
report the same accuracy); a margin past the band wins."""

from __future__ import annotations

import math

import pytest
import torch

from preftune.config import LossConfig
from preftune.losses import ResponseLogps, RowLossOutput, compute_loss
from preftune.losses.registry import TIE_RTOL, reward_rounding
from preftune.training.metrics import RowStats
from preftune.training.objective import MicroBatchLosses

BETA = 0.1
REF = [-70.0, -70.0, -35.5, -12.25]


def test_reward_rounding_closed_form() -> None:
    band = reward_rounding(torch.tensor([-70.0, 3.0]), torch.tensor([-69.0, -1.0]), beta=0.5)
    assert band.dtype == torch.float64
    assert band.tolist() == [2.0**-20 * 0.5 * 139.0, 2.0**-20 * 0.5 * 4.0]
    assert reward_rounding(torch.tensor([-8.0]), None, beta=-2.0).tolist() == [TIE_RTOL * 2 * 8.0]


def _stats(logps: ResponseLogps, cfg: LossConfig) -> RowStats:
    """The trainer's metric sums of one micro-batch of ``logps``."""
    out = compute_loss(logps, cfg)
    stats = RowStats()
    stats.add(MicroBatchLosses(out.losses.mean(), out.losses, out, logps, torch.zeros(logps.num_rows)), 40)
    return stats


def _pair_accuracy(chosen: list[float], rejected: list[float]) -> float:
    """Four pair rows, numbered as a batch numbers them: the four chosen responses, then the four rejected."""
    logps = ResponseLogps(
        policy=torch.tensor(chosen + rejected),
        ref=torch.tensor(REF + REF),
        tokens=torch.full((8,), 5.0),
        scores=torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64),
        row=torch.arange(4).repeat(2),
        num_rows=4,
    )
    return _stats(logps, LossConfig(beta=BETA)).means()["rewards/accuracies"]


def test_pair_margins_within_rounding_are_ties_on_either_side() -> None:
    ulp = [v * 2.0**-23 for v in REF]  # one float32 ulp of each log-prob: what another kernel may round to
    above = [r - u for r, u in zip(REF, ulp, strict=True)]  # the chosen reward a hair above 0 ...
    below = [r + u for r, u in zip(REF, ulp, strict=True)]  # ... or a hair below
    assert _pair_accuracy(above, REF) == 0.0
    assert _pair_accuracy(below, REF) == 0.0
    assert _pair_accuracy(REF, REF) == 0.0
    # A margin of 1e-3 in log-prob (1e-4 in reward) is far past the band (2^-20 x 0.1 x 280 = 2.7e-5).
    won = [r + 1e-3 for r in REF]
    assert _pair_accuracy(won, REF) == 1.0
    assert _pair_accuracy(won[:2] + REF[2:], REF) == 0.5


def _group_sums(policy: list[float]) -> dict[str, float]:
    ref = torch.tensor([-40.0, -41.0, -42.0, -20.0, -21.0], dtype=torch.float64)
    logps = ResponseLogps(
        policy=torch.tensor(policy, dtype=torch.float64),
        ref=ref,
        tokens=torch.ones(5),
        scores=torch.tensor([3.0, 2.0, 1.0, 1.0, 0.0], dtype=torch.float64),
        row=torch.tensor([0, 0, 0, 1, 1]),
        num_rows=2,
    )
    return _stats(logps, LossConfig(beta=BETA, pairs="all")).sums


def test_group_rewards_within_rounding_are_tied() -> None:
    ref = [-40.0, -41.0, -42.0, -20.0, -21.0]
    # Rounding-sized wobble ordered exactly against the scores: still ties, so nothing is won.
    wobble = [r + d * 2.0**-23 * abs(r) for r, d in zip(ref, [1, 0, -1, 1, -1], strict=True)]
    for policy in (ref, wobble):
        sums = _group_sums(policy)
        assert (sums["pairs"], sums["rewards/accuracies"]) == (4, 0)
        assert sums["rewards/top1_accuracies"] == 0  # the highest reward is shared with worse responses
        assert sums["rewards/spearman"] == 0  # constant rewards: no order
    trained = [r + d for r, d in zip(ref, [0.5, 0.2, -0.1, 0.3, -0.3], strict=True)]
    sums = _group_sums(trained)
    assert (sums["rewards/accuracies"], sums["rewards/top1_accuracies"]) == (4, 2)
    assert sums["rewards/spearman"] == 2.0


def _group_by_group(logps: ResponseLogps, out: RowLossOutput) -> dict[str, float]:
    """The plain path: each group's metrics on its own rewards, scores and rounding, summed over the groups."""
    sums = dict.fromkeys(
        ("rewards/top1_accuracies", "rewards/spearman", "rewards/chosen", "rewards/rejected"), 0.0
    )
    assert out.rounding is not None
    for g in range(logps.num_rows):
        mine = logps.row == g
        r, s, band = out.rewards[mine].double(), logps.scores[mine].double(), out.rounding[mine].double()
        beats = r[:, None] - r[None, :] > band[:, None] + band[None, :]
        top, bottom, highest = s == s.max(), s == s.min(), ~beats.any(0)
        ranks = []
        for above in (beats, s[:, None] > s[None, :]):
            below, equal = above.sum(1).double(), (~above & ~above.T).sum(1).double()
            ranks.append(below + (equal + 1) / 2 - (below + (equal + 1) / 2).mean())
        norm = torch.sqrt((ranks[0] ** 2).sum() * (ranks[1] ** 2).sum())
        sums["rewards/top1_accuracies"] += float(bool(top[highest].all()))
        sums["rewards/spearman"] += float((ranks[0] * ranks[1]).sum() / norm) if norm > 0 else 0.0
        sums["rewards/chosen"] += float(r[top].mean())
        sums["rewards/rejected"] += float(r[bottom].mean())
    return sums


@pytest.mark.parametrize("seed", range(6))
def test_group_metrics_for_all_groups_at_once_equal_group_by_group(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(2, 6, (7,), generator=gen)
    group = torch.repeat_interleave(torch.arange(7), sizes)
    n = len(group)
    ref = -torch.rand(n, generator=gen, dtype=torch.float64) * 80
    # Rewards with ties (policy == reference on some responses) and scores with ties (a few levels).
    policy = ref + torch.where(
        torch.rand(n, generator=gen) < 0.3, 0.0, torch.randn(n, generator=gen).double()
    )
    scores = torch.randint(0, 3, (n,), generator=gen).double()
    logps = ResponseLogps(policy=policy, ref=ref, tokens=torch.ones(n), scores=scores, row=group, num_rows=7)
    # Listwise, so a group whose scores are all tied is allowed (Spearman 0 there: no order).
    cfg = LossConfig(type="plackett_luce", beta=BETA)
    got, want = _stats(logps, cfg).sums, _group_by_group(logps, compute_loss(logps, cfg))
    for key, value in want.items():
        # The rank metrics are float64 sums; the rewards are summed in float32, as the trainer logs them.
        tolerance = 1e-6 if key in ("rewards/chosen", "rewards/rejected") else 1e-12
        assert got[key] == pytest.approx(value, rel=tolerance, abs=tolerance), key


# ---------------------------------------------------------------- metrics


# Three groups (r = reward, s = score):
#   0: s [3, 1, 2],       r [0.2, -0.1, 0.05]      ordered perfectly
#   1: s [.5, 2, .5, 1],  r [0.3, 0.4, -0.2, 0.1]  pair (6, 3) wrong; top-1 right
#   2: s [1, 0],          r [0, 0]                 a reward tie: the pair and top-1 both count as wrong
METRIC_SCORES = [3.0, 1.0, 2.0, 0.5, 2.0, 0.5, 1.0, 1.0, 0.0]
METRIC_REWARDS = [0.2, -0.1, 0.05, 0.3, 0.4, -0.2, 0.1, 0.0, 0.0]
METRIC_GROUPS = [0, 0, 0, 1, 1, 1, 1, 2, 2]


def metric_stats(lo: int, hi: int) -> RowStats:
    group = [g - METRIC_GROUPS[lo] for g in METRIC_GROUPS[lo:hi]]
    x = ResponseLogps(
        policy=torch.zeros(hi - lo, dtype=torch.float64), ref=None, tokens=torch.ones(hi - lo),
        scores=torch.tensor(METRIC_SCORES[lo:hi], dtype=torch.float64), row=torch.tensor(group),
        num_rows=max(group) + 1,
    )  # fmt: skip
    out = RowLossOutput(torch.zeros(x.num_rows), torch.tensor(METRIC_REWARDS[lo:hi], dtype=torch.float64))
    stats = RowStats()
    stats.add(MicroBatchLosses(out.losses.sum(), out.losses, out, x, torch.zeros(x.num_rows)), num_tokens=0)
    return stats


def metric_sums(lo: int, hi: int) -> dict[str, float]:
    return metric_stats(lo, hi).sums


def test_group_metric_sums_hand_example() -> None:
    sums = metric_sums(0, 9)
    # Group 1 Spearman: score ranks [1.5, 4, 1.5, 3], reward ranks [3, 4, 1, 2]; centred (mean 2.5):
    # dx = [-1, 1.5, -1, .5], dy = [.5, 1.5, -1.5, -.5]; sum dx dy = 3, sum dx^2 = 4.5, sum dy^2 = 5.
    rho1 = 3 / math.sqrt(4.5 * 5)
    assert sums["rows"] == 3 and sums["wide_rows"] == 2
    assert sums["pairs"] == 3 + 5 + 1
    assert sums["rewards/accuracies"] == 3 + 4 + 0
    assert sums["rewards/top1_accuracies"] == 1 + 1 + 0
    assert sums["rewards/spearman"] == pytest.approx(1 + rho1 + 0, rel=1e-12)  # constant rewards: 0
    # best: the top-scored response's reward; worst: the mean over the tied bottom (group 1: (0.3 - 0.2) / 2).
    # Rewards are summed in float32, as the trainer logs them.
    assert sums["rewards/chosen"] == pytest.approx(0.2 + 0.4 + 0.0, rel=1e-6)
    assert sums["rewards/rejected"] == pytest.approx(-0.1 + 0.05 + 0.0, rel=1e-6)
    assert sums["rewards/margins"] == pytest.approx(0.3 + 0.35 + 0.0, rel=1e-6)
    means = metric_stats(0, 9).means()
    assert means["rewards/accuracies"] == pytest.approx(7 / 9)
    assert means["rewards/top1_accuracies"] == pytest.approx(2 / 3)
    assert means["rewards/spearman"] == pytest.approx((1 + rho1) / 3)
    assert means["rewards/margins"] == pytest.approx(0.65 / 3)


def test_group_metric_sums_add_exactly_over_micro_batches() -> None:
    whole, first, second = metric_sums(0, 9), metric_sums(0, 3), metric_sums(3, 9)
    for key, value in whole.items():
        assert first[key] + second[key] == pytest.approx(value, rel=1e-6), key
