"""Metrics of prompt groups (one prompt, K responses with scores), kept as SUMS like :class:`.metrics.PairStats`:
sums over micro-batches and processes add up exactly, and each mean is one sum over its count at the end.

``group_metric_sums(logps, out)`` gives, for a micro-batch of G groups (r = reward, s = score):

    groups                    G
    ordered_pairs             pairs (i, j) of one group with s_i > s_j (tied scores are no pair)
    rewards/accuracies        of those, the pairs with r_i > r_j (a reward tie counts as wrong)
    rewards/top1_accuracies   groups whose highest reward is held by top-scored responses only (a response
                              tied with the highest holds it too)
    rewards/spearman          sum over groups of Spearman's rho of r against s (average ranks for ties; 0 for a
                              group whose rewards, or scores, are all equal: no order to correlate)
    rewards/chosen, rejected  sum over groups of the mean reward of the responses tied for the top (best) /
                              bottom (worst) score
    rewards/margins           sum over groups of best - worst

The keys shared with pair runs mean what the pair metric means when K = 2 (accuracy, margin, the chosen and
rejected rewards), so logs, progress bar, summary and report read the same for both.

Rewards are compared up to their rounding (``GroupLossOutput.rounding``, see
:func:`preftune.losses.registry.reward_rounding`): r_i > r_j means r_i - r_j exceeds both bands together, and
two rewards closer than that are tied. With policy == reference every reward is a tie, on every machine: the
accuracies are 0 and Spearman's rho 0 (no order), whatever side of 0 the rounding fell on.

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
    band = torch.zeros_like(rewards) if out.rounding is None else out.rounding.detach().double().cpu()
    scores = logps.scores.detach().double().cpu()
    group = logps.group.cpu()
    same = group[:, None] == group[None, :]
    ordered = same & (scores[:, None] > scores[None, :])
    beats = same & (rewards[:, None] - rewards[None, :] > band[:, None] + band[None, :])  # [i, j]: r_i > r_j
    sums = {
        "groups": float(logps.num_groups),
        "ordered_pairs": float(ordered.sum()),
        "rewards/accuracies": float((ordered & beats).sum()),
    }
    sums.update(_per_group_sums(rewards, scores, group, logps.num_groups, beats, ordered))
    sums["rewards/margins"] = sums["rewards/chosen"] - sums["rewards/rejected"]
    return sums


def group_metric_means(sums: dict[str, float]) -> dict[str, float]:
    """Each metric over its count (0 when the count is 0), plus the counts themselves."""
    means = {
        key: sums[key] / sums[count] if sums[count] else 0.0 for key, count in GROUP_METRIC_COUNTS.items()
    }
    return {**means, "groups": sums["groups"], "ordered_pairs": sums["ordered_pairs"]}


def _per_group_sums(
    rewards: Tensor, scores: Tensor, group: Tensor, num_groups: int, beats: Tensor, ordered: Tensor
) -> dict[str, float]:
    """Top-1, Spearman and the best and worst responses' mean rewards, each summed over the groups, for all the
    groups at once. ``beats[i, j]`` and ``ordered[i, j]``: i's reward (score) is above j's, in the same group."""
    same = group[:, None] == group[None, :]
    top = scores == _per_group(scores, group, num_groups, "amax")[group]
    bottom = scores == _per_group(scores, group, num_groups, "amin")[group]
    highest = ~beats.any(0)  # no response's reward is above it: the highest reward, or tied with it
    # Every response holding the highest reward must be top-scored: a reward tie with a worse one is wrong.
    misplaced = _sum(((highest & ~top).double()), group, num_groups)
    rx, ry = _average_ranks(beats, same), _average_ranks(ordered, same)
    size = _sum(torch.ones_like(rx), group, num_groups)
    dx, dy = (
        rx - (_sum(rx, group, num_groups) / size)[group],
        ry - (_sum(ry, group, num_groups) / size)[group],
    )
    norm = torch.sqrt(_sum(dx * dx, group, num_groups) * _sum(dy * dy, group, num_groups))
    covariance = _sum(dx * dy, group, num_groups)
    spearman = torch.where(norm > 0, covariance / norm.clamp(min=1e-300), 0.0)  # 0: no order to correlate
    return {
        "rewards/top1_accuracies": float((misplaced == 0).sum()),
        "rewards/spearman": float(spearman.sum()),
        "rewards/chosen": float(
            (_sum(rewards * top, group, num_groups) / _sum(top.double(), group, num_groups)).sum()
        ),
        "rewards/rejected": float(
            (_sum(rewards * bottom, group, num_groups) / _sum(bottom.double(), group, num_groups)).sum()
        ),
    }


def _sum(values: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """(G,) per-group sums of one value per response."""
    return values.new_zeros(num_groups).index_add(0, group, values)


def _per_group(values: Tensor, group: Tensor, num_groups: int, reduce: str) -> Tensor:
    """(G,) per-group max ("amax") or min ("amin")."""
    return values.new_zeros(num_groups).scatter_reduce(0, group, values, reduce, include_self=False)


def _average_ranks(above: Tensor, same: Tensor) -> Tensor:
    """1-based ranks within each group from ``above[i, j]`` (i's value is above j's, both of one group), ties
    sharing the mean of their places: one group's values [0.3, 0.1, 0.1] -> [3, 1.5, 1.5]."""
    below = above.sum(1).double()  # how many values of its group i is above
    equal = (same & ~above & ~above.T).sum(1).double()  # neither above the other: i's ties, i itself included
    return below + (equal + 1) / 2
