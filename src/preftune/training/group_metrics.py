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
from ..losses.groups import at_group_extreme, sum_per_group

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
    sums.update(_per_group_sums(logps, rewards, same, beats, ordered))
    sums["rewards/margins"] = sums["rewards/chosen"] - sums["rewards/rejected"]
    return sums


def group_metric_means(sums: dict[str, float]) -> dict[str, float]:
    """Each metric over its count (0 when the count is 0), plus the counts themselves."""
    means = {
        key: sums[key] / sums[count] if sums[count] else 0.0 for key, count in GROUP_METRIC_COUNTS.items()
    }
    return {**means, "groups": sums["groups"], "ordered_pairs": sums["ordered_pairs"]}


def _per_group_sums(
    logps: GroupLogps, rewards: Tensor, same: Tensor, beats: Tensor, ordered: Tensor
) -> dict[str, float]:
    """Top-1, Spearman and the best and worst responses' mean rewards, each summed over the groups, for all the
    groups at once. ``same[i, j]``: i and j answer one prompt; ``beats[i, j]`` and ``ordered[i, j]``: i's reward
    (score) is above j's, in the same group."""
    group, num_groups = logps.group.cpu(), logps.num_groups

    def per_group(values: Tensor) -> Tensor:
        return sum_per_group(values, group, num_groups)

    top, bottom = at_group_extreme(logps, "amax").cpu(), at_group_extreme(logps, "amin").cpu()
    highest = ~beats.any(0)  # no response's reward is above it: the highest reward, or tied with it
    # Every response holding the highest reward must be top-scored: a reward tie with a worse one is wrong.
    misplaced = per_group((highest & ~top).double())
    rx, ry = _average_ranks(beats, same), _average_ranks(ordered, same)
    size = per_group(torch.ones_like(rx))
    dx, dy = rx - (per_group(rx) / size)[group], ry - (per_group(ry) / size)[group]
    norm = torch.sqrt(per_group(dx * dx) * per_group(dy * dy))
    spearman = torch.where(
        norm > 0, per_group(dx * dy) / norm.clamp(min=1e-300), 0.0
    )  # 0: no order to correlate
    return {
        "rewards/top1_accuracies": float((misplaced == 0).sum()),
        "rewards/spearman": float(spearman.sum()),
        "rewards/chosen": float((per_group(rewards * top) / per_group(top.double())).sum()),
        "rewards/rejected": float((per_group(rewards * bottom) / per_group(bottom.double())).sum()),
    }


def _average_ranks(above: Tensor, same: Tensor) -> Tensor:
    """1-based ranks within each group from ``above[i, j]`` (i's value is above j's, both of one group), ties
    sharing the mean of their places: one group's values [0.3, 0.1, 0.1] -> [3, 1.5, 1.5]."""
    below = above.sum(1).double()  # how many values of its group i is above
    equal = (same & ~above & ~above.T).sum(1).double()  # neither above the other: i's ties, i itself included
    return below + (equal + 1) / 2
