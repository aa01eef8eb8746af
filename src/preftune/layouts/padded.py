"""The padded layout: every sequence (prompt + one response) as a row of one right-padded batch (the plain
reference)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .batch import (
    Batch,
    Scoring,
    in_sequence_order,
    laid_out_rows,
    make_batch,
)

if TYPE_CHECKING:
    from ..data import Row


@dataclass(frozen=True)
class PaddedLayout:
    """Every sequence in one right-padded batch, in sequence order: the plain reference layout.

    Example, pad id 0, two pairs with prompts [5, 6] / [7] and responses c1=[8], r1=[9, 2], c2=[3, 2], r2=[4]:

        input_ids       = [[5, 6, 8, 0],   # prompt1 + chosen1
                           [7, 3, 2, 0],   # prompt2 + chosen2
                           [5, 6, 9, 2],   # prompt1 + rejected1
                           [7, 4, 0, 0]]   # prompt2 + rejected2
        attention_mask  = 1 where a token exists, 0 on padding
        score_targets   = [8, 3, 2, 9, 2, 4]    score_sequence = [0, 1, 1, 2, 2, 3]
        score_from      = flat index of the position just before each target: [1, 4, 5, 9, 10, 12]
    """

    name = "padded"
    pad_token_id: int
    ld_alpha: float | None = None  # LD-DPO (loss.ld_alpha): see make_batch

    def collate(self, rows: list[Row]) -> Batch:
        groups = laid_out_rows(rows)
        sequences = in_sequence_order(groups)
        width = max(len(prompt) + len(resp) for prompt, resp in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        scoring = Scoring()
        for row, (prompt, resp) in enumerate(sequences):
            length = len(prompt) + len(resp)
            input_ids[row, :length] = torch.tensor(prompt + resp)
            attention_mask[row, :length] = 1
            first = row * width + len(prompt)  # flat position of the first response token
            scoring.add(row, list(range(first - 1, first - 1 + len(resp))), resp)
        inputs = (input_ids, attention_mask, None)
        return make_batch(rows, groups, inputs, scoring, ld_alpha=self.ld_alpha)

    def laid_out_tokens(self, rows: Sequence[Row]) -> int:
        """The padded rectangle, sequences x the longest (padding included): what the forward holds. Two pairs
        with prompts of 2 and 1 tokens and responses of 1, 2 / 2, 1 tokens lay out 4 x 4 = 16."""
        sequences = in_sequence_order(laid_out_rows(rows))
        return len(sequences) * max(len(prompt) + len(resp) for prompt, resp in sequences)
