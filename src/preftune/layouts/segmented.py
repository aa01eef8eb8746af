"""Padding-free layouts: every sequence of a micro-batch in one row, attention confined by a segment plan.

``packed`` lays the 2B sequences (prompt + chosen, prompt + rejected) end to end. ``prefix_shared`` lays each
pair out once as prompt + chosen + rejected: the rejected response attends to the prompt but not to the chosen
response, and its positions continue from the prompt's end, so the prompt is encoded once instead of twice.
Both score exactly the tokens the padded layout scores, from hidden states that saw exactly the same context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .batch import Batch, make_batch, pair_sequences, score_pairs
from .plan import Segment, SegmentPlan

if TYPE_CHECKING:
    from ..data import TokenizedPair


@dataclass(frozen=True)
class PackedLayout:
    """One row, one causal segment per sequence, position ids restarting at each.

    Example, two pairs, prompts [5, 6] / [7], chosen [8] / [3, 2], rejected [9, 2] / [4]:

        input_ids    = [[5, 6, 8,  7, 3, 2,  5, 6, 9, 2,  7, 4]]
        position_ids = [[0, 1, 2,  0, 1, 2,  0, 1, 2, 3,  0, 1]]
        segments     = [0, 3) [3, 6) [6, 10) [10, 12), each causal over itself only
    """

    name = "packed"
    pad_token_id: int = 0  # taken like every layout's; nothing is padded
    pair_logps = staticmethod(score_pairs)

    def collate(self, pairs: list[TokenizedPair]) -> Batch:
        responses, sequences = pair_sequences(pairs)
        row: list[int] = []
        positions: list[int] = []
        segments: list[Segment] = []
        score_from: list[int] = []
        score_targets: list[int] = []
        score_sequence: list[int] = []
        for i, (seq, resp) in enumerate(zip(sequences, responses, strict=True)):
            start = len(row)
            segments.append(Segment(start, start + len(seq)))
            first = start + len(seq) - len(resp)  # position of the first response token
            score_from.extend(range(first - 1, first - 1 + len(resp)))
            score_targets.extend(resp)
            score_sequence.extend([i] * len(resp))
            row.extend(seq)
            positions.extend(range(len(seq)))
        return _one_row(
            pairs, sequences, row, positions, segments, (score_from, score_targets, score_sequence)
        )


@dataclass(frozen=True)
class PrefixSharedLayout:
    """One row holding prompt + chosen + rejected per pair; the prompt is encoded once per model.

    Example, prompt [5, 6], chosen [8], rejected [9, 2]:

        input_ids    = [[5, 6, 8, 9, 2]]
        position_ids = [[0, 1, 2, 2, 3]]       rejected continues from the prompt's end, like in its own sequence
        segments     = [0, 3) causal;  [3, 5) causal over itself, plus all of the prompt [0, 2)

    Both responses' first tokens are predicted from the prompt's last position (index 1 here); the rest from the
    previous token of the same response.
    """

    name = "prefix_shared"
    pad_token_id: int = 0  # taken like every layout's; nothing is padded
    pair_logps = staticmethod(score_pairs)

    def collate(self, pairs: list[TokenizedPair]) -> Batch:
        _, sequences = pair_sequences(pairs)
        n = len(pairs)
        row: list[int] = []
        positions: list[int] = []
        segments: list[Segment] = []
        scored: list[tuple[list[int], list[int], list[int]]] = [([], [], []) for _ in range(2 * n)]
        for k, pair in enumerate(pairs):
            prompt, chosen, rejected = pair.prompt_ids, pair.chosen_ids, pair.rejected_ids
            if not prompt:
                raise ValueError(
                    f"{pair.source} row {pair.index}: empty prompt; prefix_shared needs one token"
                )
            start = len(row)
            last_prompt = start + len(prompt) - 1
            rejected_start = start + len(prompt) + len(chosen)
            segments.append(Segment(start, rejected_start))
            segments.append(Segment(rejected_start, rejected_start + len(rejected), start, last_prompt + 1))
            from_chosen = list(range(last_prompt, last_prompt + len(chosen)))
            from_rejected = [last_prompt, *range(rejected_start, rejected_start + len(rejected) - 1)]
            scored[k] = (from_chosen, chosen, [k] * len(chosen))
            scored[n + k] = (from_rejected, rejected, [n + k] * len(rejected))
            row.extend(prompt + chosen + rejected)
            positions.extend(
                [*range(len(prompt) + len(chosen)), *range(len(prompt), len(prompt) + len(rejected))]
            )
        # Scores are listed chosen sequences first, then rejected, as every layout's score_sequence expects.
        score_from = [i for s in scored for i in s[0]]
        score_targets = [t for s in scored for t in s[1]]
        score_sequence = [q for s in scored for q in s[2]]
        return _one_row(
            pairs, sequences, row, positions, segments, (score_from, score_targets, score_sequence)
        )


def _one_row(
    pairs: list[TokenizedPair],
    sequences: list[list[int]],
    row: list[int],
    positions: list[int],
    segments: list[Segment],
    scoring: tuple[list[int], list[int], list[int]],
) -> Batch:
    return make_batch(
        pairs,
        sequences,
        torch.tensor([row], dtype=torch.long),
        None,
        torch.tensor([positions], dtype=torch.long),
        scoring,
        SegmentPlan(segments),
    )
