"""Metrics of prompt groups (one prompt, K responses with scores), kept as SUMS like :class:`.metrics.PairStats`:
sums over micro-batches and processes add up exactly, and each mean is one sum over its count at the end.

``group_metric_sums(logps, out)`` gives, for a micro-batch of G groups (r = reward, s = score):

    groups                    G
    ordered_pairs             pairs (i, j) of one group with s_i > s_j (tied scores are no pair)
    rewards/accuracies        of those, the pairs with r_i > r_j (a reward tie counts as wrong)
    rewards/top1_accuracies   groups whose highest reward is held by top-scored responses only
    rewards/spearman          sum over groups of Spearman's rho of r against s (average ranks for ties; 0 for a
                              group whose rewards, or scores, are all equal: no order to correlate)
    rewards/chosen, rejected  sum over groups of the mean reward of the responses tied for the top (best) /
                              bottom (worst) score
    rewards/margins           sum over groups of best - worst

The keys shared with pair runs mean what the pair metric means when K = 2 (accuracy, margin, the chosen and
rejected rewards), so logs, progress bar, summary and report read the same for both.

:data:`GROUP_METRIC_COUNTS` names the count each is a mean over; :func:`group_metric_means` divides.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..losses import GroupLogps, GroupLossOutput

GROUP_METRIC_COUNTS = {
    "rewards/accuracies": "ordered_pairs",
    "rewards/top1_accuracies": "groups",
    "rewards/spearman": "groups",
    "rewards/chosen": "groups",
    "rewards/rejected": "groups",
    "rewards/margins": "groups",
}


def group_metric_sums(logps: GroupLogps, out: GroupLossOutput) -> dict[str, float]:
    """The sums above for one micro-batch; add the dicts of several key by key, then :func:`group_metric_means`."""
    # float64 on CPU: a handful of numbers per response, and exact comparisons of rewards.
    rewards = out.rewards.detach().double().cpu()
    scores = logps.scores.detach().double().cpu()
    group = logps.group.cpu()
    ordered = (group[:, None] == group[None, :]) & (scores[:, None] > scores[None, :])
    sums = {
        "groups": float(logps.num_groups),
        "ordered_pairs": float(ordered.sum()),
        "rewards/accuracies": float((ordered & (rewards[:, None] > rewards[None, :])).sum()),
    }
    per_group = [_one_group(rewards[group == g], scores[group == g]) for g in range(logps.num_groups)]
    for key in ("rewards/top1_accuracies", "rewards/spearman", "rewards/chosen", "rewards/rejected"):
        sums[key] = sum(values[key] for values in per_group)
    sums["rewards/margins"] = sums["rewards/chosen"] - sums["rewards/rejected"]
    return sums


def group_metric_means(sums: dict[str, float]) -> dict[str, float]:
    """Each metric over its count (0 when the count is 0), plus the counts themselves."""
    means = {
        key: sums[key] / sums[count] if sums[count] else 0.0 for key, count in GROUP_METRIC_COUNTS.items()
    }
    return {**means, "groups": sums["groups"], "ordered_pairs": sums["ordered_pairs"]}


def _one_group(rewards: Tensor, scores: Tensor) -> dict[str, float]:
    top, bottom = scores == scores.max(), scores == scores.min()
    return {
        # Every response holding the highest reward must be top-scored: a reward tie with a worse one is wrong.
        "rewards/top1_accuracies": float(bool(top[rewards == rewards.max()].all())),
        "rewards/spearman": _spearman(rewards, scores),
        "rewards/chosen": float(rewards[top].mean()),
        "rewards/rejected": float(rewards[bottom].mean()),
    }


def _average_ranks(v: Tensor) -> Tensor:
    """1-based ranks, ties sharing the mean of their places: [0.3, 0.1, 0.1] -> [3, 1.5, 1.5]."""
    below = (v[None, :] < v[:, None]).sum(1).to(v.dtype)  # v's dtype: float64 here, not the default float32
    equal = (v[None, :] == v[:, None]).sum(1).to(v.dtype)  # counts v itself
    return below + (equal + 1) / 2


def _spearman(x: Tensor, y: Tensor) -> float:
    """Pearson correlation of the average ranks of x and y; 0 when either is constant."""
    dx, dy = _average_ranks(x), _average_ranks(y)
    dx, dy = dx - dx.mean(), dy - dy.mean()
    norm = torch.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / norm) if norm > 0 else 0.0
