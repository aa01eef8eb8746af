"""The layout seam: :class:`Batch` (model inputs plus the bookkeeping to score them), :class:`PairForward`
(per-pair results), the :class:`Layout` protocol, and the collate and scoring functions every layout shares.

A layout owns two things: ``collate`` (pairs -> :class:`Batch`) and ``pair_logps`` (scorer + batch ->
:class:`PairForward`). The trainer only sees this seam, so faster layouts slot in without touching the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from .plan import SegmentPlan

if TYPE_CHECKING:
    from ..data import TokenizedPair


@dataclass
class Batch:
    """Model inputs for 2B sequences (B chosen then B rejected) plus the token bookkeeping to score them.

    ``score_from`` indexes the flattened (rows x T) hidden states that predict each scored token,
    ``score_targets`` holds those tokens and ``score_sequence`` the sequence (0..2B-1) each one belongs to.
    """

    input_ids: Tensor
    attention_mask: Tensor | None
    position_ids: Tensor | None
    score_from: Tensor
    score_targets: Tensor
    score_sequence: Tensor
    num_pairs: int
    num_tokens: int  # non-pad tokens over all sequences, counted once per sequence
    rows: list[tuple[str, int]] = field(
        default_factory=list
    )  # (source, index) of each pair, for error messages
    # Segment layouts lay every sequence in one row and say here which tokens attend to which.
    attention_plan: SegmentPlan | None = None
    pair_ids: Tensor | None = None  # (B,) each pair's TokenizedPair.pair_id, for a precomputed reference

    def to(self, device: torch.device) -> Batch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return Batch(**moved)


@dataclass
class PairForward:
    """Per-pair results of one forward: summed response log-probs and response token counts."""

    chosen_logps: Tensor  # (B,)
    rejected_logps: Tensor  # (B,)
    chosen_tokens: Tensor  # (B,)
    rejected_tokens: Tensor  # (B,)
    aux_loss: Tensor | None = None


class Layout(Protocol):
    """How pairs become one forward: ``collate`` (pairs -> :class:`Batch`) and ``pair_logps`` (scorer + batch ->
    :class:`PairForward`). Every layout is exact: the same per-pair log-probs as ``padded``."""

    name: str

    def collate(self, pairs: list[TokenizedPair]) -> Batch: ...

    def pair_logps(self, scorer: nn.Module, batch: Batch, want_aux: bool = False) -> PairForward: ...


def split_pairs(seq_logps: Tensor, seq_tokens: Tensor, num_pairs: int, aux: Tensor | None) -> PairForward:
    return PairForward(
        chosen_logps=seq_logps[:num_pairs],
        rejected_logps=seq_logps[num_pairs:],
        chosen_tokens=seq_tokens[:num_pairs],
        rejected_tokens=seq_tokens[num_pairs:],
        aux_loss=aux,
    )


def pair_sequences(pairs: list[TokenizedPair]) -> tuple[list[list[int]], list[list[int]]]:
    """(responses, full sequences) of the 2B sequences: chosen ones first, then rejected, each after its prompt."""
    prompts = [p.prompt_ids for p in pairs]
    responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    return responses, [prompt + resp for prompt, resp in zip(prompts + prompts, responses, strict=True)]


def make_batch(
    pairs: list[TokenizedPair],
    sequences: list[list[int]],
    input_ids: Tensor,
    attention_mask: Tensor | None,
    position_ids: Tensor | None,
    scoring: tuple[list[int], list[int], list[int]],
    attention_plan: SegmentPlan | None = None,
) -> Batch:
    score_from, score_targets, score_sequence = scoring
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        score_from=torch.tensor(score_from, dtype=torch.long),
        score_targets=torch.tensor(score_targets, dtype=torch.long),
        score_sequence=torch.tensor(score_sequence, dtype=torch.long),
        num_pairs=len(pairs),
        num_tokens=sum(len(s) for s in sequences),
        rows=[(p.source, p.index) for p in pairs],
        attention_plan=attention_plan,
        # Pair-like objects without an id (e.g. built by hand) get -1: only a cached reference needs one.
        pair_ids=torch.tensor([getattr(p, "pair_id", -1) for p in pairs], dtype=torch.long),
    )


def sum_per_sequence(token_values: Tensor, sequence_ids: Tensor, num_sequences: int) -> Tensor:
    """Scatter-add per-token values into per-sequence sums: values (N,), ids (N,) in [0, S) -> (S,)."""
    out = torch.zeros(num_sequences, dtype=token_values.dtype, device=token_values.device)
    return out.index_add(0, sequence_ids, token_values)


def score_pairs(scorer: nn.Module, batch: Batch, want_aux: bool = False) -> PairForward:
    """Per-pair summed log-probs and token counts of a batch of any layout: the batch says which hidden state
    predicts each scored token (``score_from``) and which sequence it belongs to (``score_sequence``)."""
    token_logps, aux = scorer(
        batch.input_ids,
        batch.attention_mask,
        batch.position_ids,
        batch.score_from,
        batch.score_targets,
        want_aux,
        batch.attention_plan,
    )
    num_seqs = 2 * batch.num_pairs
    seq_logps = sum_per_sequence(token_logps, batch.score_sequence, num_seqs)
    seq_tokens = sum_per_sequence(torch.ones_like(token_logps), batch.score_sequence, num_seqs)
    return split_pairs(seq_logps, seq_tokens, batch.num_pairs, aux)
