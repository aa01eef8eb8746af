"""The padded layout: chosen and rejected sequences as rows of one right-padded batch (the plain reference)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .batch import Batch, make_batch, pair_sequences, score_pairs

if TYPE_CHECKING:
    from ..data import TokenizedPair


@dataclass(frozen=True)
class PaddedLayout:
    """Chosen and rejected concatenated into one right-padded batch: the plain reference layout.

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
    pair_logps = staticmethod(score_pairs)

    def collate(self, pairs: list[TokenizedPair]) -> Batch:
        responses, sequences = pair_sequences(pairs)
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        score_from: list[int] = []
        score_targets: list[int] = []
        score_sequence: list[int] = []
        for row, (seq, resp) in enumerate(zip(sequences, responses, strict=True)):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            attention_mask[row, : len(seq)] = 1
            first = len(seq) - len(resp)
            score_from.extend(range(row * width + first - 1, row * width + len(seq) - 1))
            score_targets.extend(resp)
            score_sequence.extend([row] * len(resp))
        scoring = (score_from, score_targets, score_sequence)
        return make_batch(pairs, sequences, input_ids, attention_mask, None, scoring)
