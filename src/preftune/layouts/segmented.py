"""Padding-free layouts: every sequence of a micro-batch in one row, attention confined by a segment plan.

``packed`` lays the sequences (prompt + one response each) end to end. ``prefix_shared`` lays each prompt out once
with all its responses after it (a pair: prompt + chosen + rejected; a group: prompt + r1 + ... + rK): every
response after the first attends to the prompt but not to the responses laid out between them, and its
positions continue from the prompt's end, so the prompt is encoded once instead of once per response.
Both score exactly the tokens the padded layout scores, from hidden states that saw exactly the same context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .batch import (
    Batch,
    PromptGroup,
    Scoring,
    in_sequence_order,
    laid_out_rows,
    make_batch,
    sequence_tokens,
)
from .plan import Segment, SegmentPlan

if TYPE_CHECKING:
    from ..data import Row


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
    ld_alpha: float | None = None  # LD-DPO (loss.ld_alpha): see make_batch

    def collate(self, rows: list[Row]) -> Batch:
        return _packed(rows, laid_out_rows(rows), self.ld_alpha)

    def laid_out_tokens(self, rows: Sequence[Row]) -> int:
        """Every sequence's own tokens, its prompt once per response (12 in the example above)."""
        return sequence_tokens(laid_out_rows(rows))


def _packed(rows: Sequence[Row], groups: list[PromptGroup], ld_alpha: float | None) -> Batch:
    row: list[int] = []
    positions: list[int] = []
    segments: list[Segment] = []
    scoring = Scoring()
    for sequence, (prompt, resp) in enumerate(in_sequence_order(groups)):
        start = len(row)
        segments.append(Segment(start, start + len(prompt) + len(resp)))
        first = start + len(prompt)  # position of the first response token
        scoring.add(sequence, list(range(first - 1, first - 1 + len(resp))), resp)
        row.extend(prompt + resp)
        positions.extend(range(len(prompt) + len(resp)))
    return _one_row(rows, groups, row, positions, segments, scoring, ld_alpha)


@dataclass(frozen=True)
class PrefixSharedLayout:
    """One row holding each prompt once, then its responses; the prompt is encoded once per model.

    Example, prompt [5, 6], chosen [8], rejected [9, 2]:

        input_ids    = [[5, 6, 8, 9, 2]]
        position_ids = [[0, 1, 2, 2, 3]]       rejected continues from the prompt's end, like in its own sequence
        segments     = [0, 3) causal;  [3, 5) causal over itself, plus all of the prompt [0, 2)

    Every response's first token is predicted from the prompt's last position (index 1 here); the rest from the
    previous token of the same response. A group lays out prompt, r1, ..., rK the same way: r2..rK each see the
    prompt and themselves only.
    """

    name = "prefix_shared"
    pad_token_id: int = 0  # taken like every layout's; nothing is padded
    ld_alpha: float | None = None  # LD-DPO (loss.ld_alpha): see make_batch

    def collate(self, rows: list[Row]) -> Batch:
        return _prefix_shared(rows, laid_out_rows(rows), self.ld_alpha)

    def laid_out_tokens(self, rows: Sequence[Row]) -> int:
        """Each prompt once, then all of its responses (5 in the example above)."""
        return sum(len(g.prompt) + sum(map(len, g.responses)) for g in laid_out_rows(rows))


def _prefix_shared(rows: Sequence[Row], groups: list[PromptGroup], ld_alpha: float | None) -> Batch:
    row: list[int] = []
    positions: list[int] = []
    segments: list[Segment] = []
    scoring = Scoring()
    for item, group in zip(rows, groups, strict=True):
        prompt = group.prompt
        if not prompt:
            raise ValueError(f"{item.source} row {item.index}: empty prompt; prefix_shared needs one token")
        start, last_prompt = len(row), len(row) + len(prompt) - 1
        for k, (sequence, resp) in enumerate(zip(group.sequences, group.responses, strict=True)):
            if k == 0:  # the prompt and the first response form one causal segment
                row.extend(prompt)
                positions.extend(range(len(prompt)))
                segments.append(Segment(start, len(row) + len(resp)))
            else:  # a later response sees the whole prompt, then itself causally
                segments.append(Segment(len(row), len(row) + len(resp), start, last_prompt + 1))
            begin = len(row)  # where this response's tokens go
            scoring.add(sequence, [last_prompt, *range(begin, begin + len(resp) - 1)], resp)
            row.extend(resp)
            positions.extend(range(len(prompt), len(prompt) + len(resp)))
    return _one_row(rows, groups, row, positions, segments, scoring, ld_alpha)


def _one_row(
    rows: Sequence[Row],
    groups: list[PromptGroup],
    row: list[int],
    positions: list[int],
    segments: list[Segment],
    scoring: Scoring,
    ld_alpha: float | None,
) -> Batch:
    inputs = (torch.tensor([row], dtype=torch.long), None, torch.tensor([positions], dtype=torch.long))
    return make_batch(rows, groups, inputs, scoring, SegmentPlan(segments), ld_alpha)
