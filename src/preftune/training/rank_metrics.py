"""Rank metrics of rows (one prompt, K >= 2 responses with scores; a pair is K = 2), kept as SUMS like
:class:`.metrics.RowStats`: sums over micro-batches and processes add up exactly, and each mean is one sum over
its count at the end.

``rank_metric_sums(logps, out)`` gives, for a micro-batch of R rows (r = reward, s = score):

    pairs                     pairs (i, j) of one row with s_i > s_j (tied scores are no pair): a pair row's one
    rewards/accuracies        of those, the pairs with r_i > r_j (a reward tie counts as wrong)
    rewards/top1_accuracies   rows whose highest reward is held by top-scored responses only (a response tied
                              with the highest holds it too)
    rewards/spearman          sum over rows of Spearman's rho of r against s (average ranks for ties; 0 for a
                              row whose rewards, or scores, are all equal: no order to correlate)

Rewards are compared up to their rounding (``RowLossOutput.rounding``, see
:func:`preftune.losses.registry.reward_rounding`): r_i > r_j means r_i - r_j exceeds both bands together, and
two rewards closer than that are tied. With policy == reference every reward is a tie, on every machine: the
accuracies are 0 and Spearman's rho 0 (no order), whatever side of 0 the rounding fell on.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..losses import ResponseLogps, RowLossOutput
from ..losses.rows import at_row_extreme, sum_per_row


def rank_metric_sums(logps: ResponseLogps, out: RowLossOutput) -> dict[str, float]:
    """The sums above for one micro-batch; add the dicts of several key by key, then divide."""
    # float64 on CPU: a handful of numbers per response, and exact comparisons of rewards.
    rewards = out.rewards.detach().double().cpu()
    band = torch.zeros_like(rewards) if out.rounding is None else out.rounding.detach().double().cpu()
    scores = logps.scores.detach().double().cpu()
    row = logps.row.cpu()
    same = row[:, None] == row[None, :]
    ordered = same & (scores[:, None] > scores[None, :])
    beats = same & (rewards[:, None] - rewards[None, :] > band[:, None] + band[None, :])  # [i, j]: r_i > r_j
    sums = {"pairs": float(ordered.sum()), "rewards/accuracies": float((ordered & beats).sum())}
    sums.update(_per_row_sums(logps, same, beats, ordered))
    return sums


def _per_row_sums(logps: ResponseLogps, same: Tensor, beats: Tensor, ordered: Tensor) -> dict[str, float]:
    """Top-1 and Spearman, each summed over the rows, for all the rows at once. ``same[i, j]``: i and j answer
    one prompt; ``beats[i, j]`` and ``ordered[i, j]``: i's reward (score) is above j's, in the same row."""
    row, num_rows = logps.row.cpu(), logps.num_rows

    def per_row(values: Tensor) -> Tensor:
        return sum_per_row(values, row, num_rows)

    top = at_row_extreme(logps, "amax").cpu()
    highest = ~beats.any(0)  # no response's reward is above it: the highest reward, or tied with it
    # Every response holding the highest reward must be top-scored: a reward tie with a worse one is wrong.
    misplaced = per_row((highest & ~top).double())
    rx, ry = _average_ranks(beats, same), _average_ranks(ordered, same)
    size = per_row(torch.ones_like(rx))
    dx, dy = rx - (per_row(rx) / size)[row], ry - (per_row(ry) / size)[row]
    norm = torch.sqrt(per_row(dx * dx) * per_row(dy * dy))
    spearman = torch.where(
        norm > 0, per_row(dx * dy) / norm.clamp(min=1e-300), 0.0
    )  # 0: no order to correlate
    return {
        "rewards/top1_accuracies": float((misplaced == 0).sum()),
        "rewards/spearman": float(spearman.sum()),
    }


def _average_ranks(above: Tensor, same: Tensor) -> Tensor:
    """1-based ranks within each row from ``above[i, j]`` (i's value is above j's, both of one row), ties
    sharing the mean of their places: one row's values [0.3, 0.1, 0.1] -> [3, 1.5, 1.5]."""
    below = above.sum(1).double()  # how many values of its group i is above
    equal = (same & ~above & ~above.T).sum(1).double()  # neither above the other: i's ties, i itself included
    return below + (equal + 1) / 2
