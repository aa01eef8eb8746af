"""Reward ties: a margin within rounding of 0 is a tie, counted as wrong whatever side of 0 the rounding fell on
(so two BLAS kernels, or a live and a cached reference, report the same accuracy); a margin past the band wins."""

from __future__ import annotations

import pytest
import torch

from preftune.config import LossConfig
from preftune.layouts import PairForward
from preftune.losses import GroupLogps, GroupLossOutput, PairLogps, compute_group_loss, compute_loss
from preftune.losses.registry import TIE_RTOL, reward_rounding
from preftune.training.group_metrics import group_metric_sums
from preftune.training.metrics import PairStats
from preftune.training.objective import MicroBatchLosses

BETA = 0.1
REF = [-70.0, -70.0, -35.5, -12.25]


def test_reward_rounding_closed_form() -> None:
    band = reward_rounding(torch.tensor([-70.0, 3.0]), torch.tensor([-69.0, -1.0]), beta=0.5)
    assert band.dtype == torch.float64
    assert band.tolist() == [2.0**-20 * 0.5 * 139.0, 2.0**-20 * 0.5 * 4.0]
    assert reward_rounding(torch.tensor([-8.0]), None, beta=-2.0).tolist() == [TIE_RTOL * 2 * 8.0]


def _pair_accuracy(chosen: list[float], rejected: list[float]) -> float:
    ref = torch.tensor(REF)
    logps = PairLogps(
        torch.tensor(chosen), torch.tensor(rejected), ref, ref, torch.full((4,), 5.0), torch.full((4,), 5.0)
    )
    out = compute_loss(logps, LossConfig(beta=BETA))
    fwd = PairForward(logps.policy_chosen, logps.policy_rejected, logps.chosen_tokens, logps.rejected_tokens)
    stats = PairStats()
    stats.add(MicroBatchLosses(out.losses.mean(), out.losses, out, fwd, torch.zeros(4)), num_tokens=40)
    return stats.means()["rewards/accuracies"]


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
    logps = GroupLogps(
        policy=torch.tensor(policy, dtype=torch.float64),
        ref=ref,
        tokens=torch.ones(5),
        scores=torch.tensor([3.0, 2.0, 1.0, 1.0, 0.0], dtype=torch.float64),
        group=torch.tensor([0, 0, 0, 1, 1]),
        num_groups=2,
    )
    return group_metric_sums(logps, compute_group_loss(logps, LossConfig(beta=BETA, pairs="all")))


def test_group_rewards_within_rounding_are_tied() -> None:
    ref = [-40.0, -41.0, -42.0, -20.0, -21.0]
    # Rounding-sized wobble ordered exactly against the scores: still ties, so nothing is won.
    wobble = [r + d * 2.0**-23 * abs(r) for r, d in zip(ref, [1, 0, -1, 1, -1], strict=True)]
    for policy in (ref, wobble):
        sums = _group_sums(policy)
        assert (sums["ordered_pairs"], sums["rewards/accuracies"]) == (4, 0)
        assert sums["rewards/top1_accuracies"] == 0  # the highest reward is shared with worse responses
        assert sums["rewards/spearman"] == 0  # constant rewards: no order
    trained = [r + d for r, d in zip(ref, [0.5, 0.2, -0.1, 0.3, -0.3], strict=True)]
    sums = _group_sums(trained)
    assert (sums["rewards/accuracies"], sums["rewards/top1_accuracies"]) == (4, 2)
    assert sums["rewards/spearman"] == 2.0


def _group_by_group(logps: GroupLogps, out: GroupLossOutput) -> dict[str, float]:
    """The plain path: each group's metrics on its own rewards, scores and rounding, summed over the groups."""
    sums = dict.fromkeys(
        ("rewards/top1_accuracies", "rewards/spearman", "rewards/chosen", "rewards/rejected"), 0.0
    )
    assert out.rounding is not None
    for g in range(logps.num_groups):
        mine = logps.group == g
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
    logps = GroupLogps(policy=policy, ref=ref, tokens=torch.ones(n), scores=scores, group=group, num_groups=7)
    # Listwise, so a group whose scores are all tied is allowed (Spearman 0 there: no order).
    out = compute_group_loss(logps, LossConfig(type="plackett_luce", beta=BETA))
    got, want = group_metric_sums(logps, out), _group_by_group(logps, out)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
