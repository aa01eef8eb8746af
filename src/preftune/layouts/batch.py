"""The layout seam: :class:`Batch` (model inputs plus the bookkeeping to score them), the :class:`Layout`
protocol, and the pieces every layout shares to build a batch.

A layout owns ``collate`` (rows -> :class:`Batch`); :func:`preftune.model.responses.score_responses` scores a
batch of any layout. The trainer only sees this seam, so faster layouts slot in without touching the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol

import torch
from torch import Tensor

from ..data.items import Row
from .plan import SegmentPlan


@dataclass
class Batch:
    """Model inputs for S sequences (prompt + one response each) plus the token bookkeeping to score them.

    A batch of R rows (row r: a prompt with K_r responses) numbers its sequences response by response: the
    first response of every row (rows 0..R-1), then the second of every row, then the third of each row that
    has one, ... A batch of B pairs thus holds B chosen sequences, then B rejected ones.
    ``score_from`` indexes the flattened (rows x T) hidden states that predict each scored token,
    ``score_targets`` holds those tokens and ``score_sequence`` the sequence (0..S-1) each one belongs to.
    ``score_weights`` (LD-DPO, ``loss.ld_alpha``) weighs each scored token in its sequence's sum; None sums
    them plainly.
    """

    input_ids: Tensor
    attention_mask: Tensor | None
    position_ids: Tensor | None
    score_from: Tensor
    score_targets: Tensor
    score_sequence: Tensor
    sequence_row: Tensor  # (S,) long: the batch row (0..R-1) each sequence answers
    sequence_scores: Tensor  # (S,) float64: its response's score
    num_rows: int
    num_tokens: int  # non-pad tokens over all sequences, counted once per sequence
    rows: list[tuple[str, int]] = field(
        default_factory=list
    )  # (source, index) of each row, for error messages
    # Segment layouts lay every sequence in one row and say here which tokens attend to which.
    attention_plan: SegmentPlan | None = None
    row_ids: Tensor | None = None  # (R,) each row's row_id, for a precomputed reference
    # LD-DPO only: (N,) float32, 1 on a response's first l tokens (l = the shorter response of its pair), ld_alpha
    # after; decided here, when the batch is made, so every layout and every model sums the same tokens alike.
    score_weights: Tensor | None = None
    ld_alpha: float | None = None  # the loss.ld_alpha score_weights was made with (None: plain sums)

    @property
    def num_sequences(self) -> int:
        return int(self.sequence_row.numel())

    def to(self, device: torch.device) -> Batch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return Batch(**moved)


@dataclass(frozen=True)
class PromptGroup:
    """One prompt with the responses a layout lays out after it, and each response's sequence number."""

    prompt: list[int]
    responses: list[list[int]]
    sequences: list[int]


class Layout(Protocol):
    """How rows become one forward: ``collate`` (rows -> :class:`Batch`). Every layout is exact: the same
    per-response log-probs as ``padded``."""

    name: str

    def collate(self, rows: list[Row]) -> Batch: ...

    @property
    def ld_alpha(self) -> float | None:
        """LD-DPO's alpha (``loss.ld_alpha``): ``collate`` weighs tokens past a pair's shared length by it."""
        ...

    def laid_out_tokens(self, rows: Sequence[Row]) -> int:
        """Tokens one micro-batch of ``rows`` feeds the model in this layout: what ``train.micro_batch_tokens``
        budgets."""
        ...


def laid_out_rows(rows: Sequence[Row]) -> list[PromptGroup]:
    """Each row's prompt and responses, with its responses' sequence numbers: response by response, the k-th
    response of every row that has one before any (k+1)-th (see :class:`Batch`).

    A pair (rows 0, 1) and a row of three (row 2): row 0 -> [0, 3], row 1 -> [1, 4], row 2 -> [2, 5, 6].
    """
    numbers: list[list[int]] = [[] for _ in rows]
    sequence, k = 0, 0
    while any(len(row.responses) > k for row in rows):
        for r, row in enumerate(rows):
            if len(row.responses) > k:
                numbers[r].append(sequence)
                sequence += 1
        k += 1
    return [PromptGroup(row.prompt_ids, row.responses, seq) for row, seq in zip(rows, numbers, strict=True)]


def sequence_tokens(groups: list[PromptGroup]) -> int:
    """The tokens of every sequence (prompt + one response), a prompt counted once per response."""
    return sum(len(g.prompt) * len(g.responses) + sum(map(len, g.responses)) for g in groups)


def in_sequence_order(groups: list[PromptGroup]) -> list[tuple[list[int], list[int]]]:
    """(prompt, response) of every sequence, by sequence number."""
    numbered = {s: (g.prompt, r) for g in groups for s, r in zip(g.sequences, g.responses, strict=True)}
    return [numbered[s] for s in range(len(numbered))]


@dataclass
class Scoring:
    """Which hidden state predicts each scored token, the token, and its sequence; filled in any order."""

    score_from: dict[int, list[int]] = field(default_factory=dict)
    targets: dict[int, list[int]] = field(default_factory=dict)

    def add(self, sequence: int, predicted_from: list[int], response: list[int]) -> None:
        self.score_from[sequence], self.targets[sequence] = predicted_from, response

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """Listed by sequence number, as every consumer of ``score_sequence`` expects."""
        order = sorted(self.targets)
        return (
            torch.tensor([i for s in order for i in self.score_from[s]], dtype=torch.long),
            torch.tensor([t for s in order for t in self.targets[s]], dtype=torch.long),
            torch.tensor([s for s in order for _ in self.targets[s]], dtype=torch.long),
        )


def shared_length_weights(groups: list[PromptGroup], ld_alpha: float) -> Tensor:
    """LD-DPO's per-token weights in score order (sequence by sequence, as :meth:`Scoring.tensors` lists them):
    1 on each response's first l tokens, l the length of the shortest response laid out with it (its pair's
    shorter one), ``ld_alpha`` on the rest.

    Pair chosen [8], rejected [9, 2] (sequences 0 and 1), alpha 0.5: l = 1, weights [1.] + [1., 0.5].
    """
    per_sequence: dict[int, list[float]] = {}
    for group in groups:
        shared = min(len(response) for response in group.responses)
        for sequence, response in zip(group.sequences, group.responses, strict=True):
            per_sequence[sequence] = [1.0] * shared + [ld_alpha] * (len(response) - shared)
    return torch.tensor([w for s in sorted(per_sequence) for w in per_sequence[s]], dtype=torch.float32)


def make_batch(
    rows: Sequence[Row],
    groups: list[PromptGroup],
    inputs: tuple[Tensor, Tensor | None, Tensor | None],
    scoring: Scoring,
    attention_plan: SegmentPlan | None = None,
    ld_alpha: float | None = None,
) -> Batch:
    """A batch of ``rows`` laid out as ``groups``; ``inputs`` = (ids, mask, positions); ``ld_alpha`` (pairs
    only) gives it LD-DPO's :func:`shared_length_weights`."""
    if ld_alpha is not None:
        wide = next((row for row in rows if len(row.responses) != 2), None)
        if wide is not None:
            raise ValueError(
                f"{wide.source} row {wide.index}: loss.ld_alpha: LD-DPO's shared length is that of a pair, and "
                f"this row has {len(wide.responses)} responses"
            )
    score_from, score_targets, score_sequence = scoring.tensors()
    owner = {
        s: (r, float(rows[r].scores[k])) for r, g in enumerate(groups) for k, s in enumerate(g.sequences)
    }
    return Batch(
        input_ids=inputs[0],
        attention_mask=inputs[1],
        position_ids=inputs[2],
        score_from=score_from,
        score_targets=score_targets,
        score_sequence=score_sequence,
        sequence_row=torch.tensor([owner[s][0] for s in range(len(owner))], dtype=torch.long),
        sequence_scores=torch.tensor([owner[s][1] for s in range(len(owner))], dtype=torch.float64),
        num_rows=len(rows),
        num_tokens=sequence_tokens(groups),
        rows=[(row.source, row.index) for row in rows],
        attention_plan=attention_plan,
        row_ids=torch.tensor([row.row_id for row in rows], dtype=torch.long),
        score_weights=None if ld_alpha is None else shared_length_weights(groups, ld_alpha),
        ld_alpha=ld_alpha,
    )
