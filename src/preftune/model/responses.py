"""Scoring a batch of any layout: each response's summed log-prob and token count, from one forward.

The one per-response scoring path: the policy, a live reference and a precompute pass all call
:func:`score_responses`, so every layout and model sums the same tokens alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..layouts.batch import Batch


@dataclass
class ResponseForward:
    """Per-sequence results of one forward, in sequence order."""

    logps: Tensor  # (S,) summed response log-probs (weighted by Batch.score_weights under LD-DPO)
    tokens: Tensor  # (S,) response token counts
    aux_loss: Tensor | None = None
    aligned: Tensor | None = None  # (S,) :func:`mean_aligned_logps`, only when asked for (WPO)


def sum_per_sequence(token_values: Tensor, sequence_ids: Tensor, num_sequences: int) -> Tensor:
    """Scatter-add per-token values into per-sequence sums: values (N,), ids (N,) in [0, S) -> (S,)."""
    out = torch.zeros(num_sequences, dtype=token_values.dtype, device=token_values.device)
    return out.index_add(0, sequence_ids, token_values)


def mean_aligned_logps(token_logps: Tensor, lse: Tensor, sequence_ids: Tensor, tokens: Tensor) -> Tensor:
    """WPO's per-response term a = mean over the response's tokens of log p(token) - log sum_v p(v)^2, where
    log sum_v p(v)^2 = lse(2z) - 2 lse(z) from ``lse`` (N, 2); no gradient. ``tokens`` (S,) are the response
    lengths; an empty response gets a = 0 (its length is clamped to 1, as TRL does).

    One token with logits [0, ln 3], target 1: log p = ln(3/4), log sum p^2 = ln(10/16), a = ln(6/5).
    """
    gap = token_logps.detach() - (lse[:, 1] - 2 * lse[:, 0])
    return sum_per_sequence(gap, sequence_ids, tokens.numel()) / tokens.clamp(min=1)


def score_responses(
    scorer: nn.Module, batch: Batch, want_aux: bool = False, want_aligned: bool = False
) -> ResponseForward:
    """Per-sequence summed log-probs and token counts of a batch of any layout: the batch says which hidden
    state predicts each scored token (``score_from``) and which sequence it belongs to (``score_sequence``).

    The one place token log-probs are summed per sequence: LD-DPO's ``batch.score_weights`` apply here, so
    every layout, the policy and the reference all weigh the same tokens alike. ``want_aligned`` (WPO) also
    returns :func:`mean_aligned_logps` of every sequence, from the unweighted token log-probs.
    """
    token_logps, aux, lse = scorer(
        batch.input_ids,
        batch.attention_mask,
        batch.position_ids,
        batch.score_from,
        batch.score_targets,
        want_aux,
        batch.attention_plan,
        want_aligned,
    )
    num_seqs, seq_ids = batch.num_sequences, batch.score_sequence
    weighted = token_logps if batch.score_weights is None else token_logps * batch.score_weights
    seq_logps = sum_per_sequence(weighted, seq_ids, num_seqs)
    seq_tokens = sum_per_sequence(torch.ones_like(token_logps), seq_ids, num_seqs)
    aligned = mean_aligned_logps(token_logps, lse, seq_ids, seq_tokens) if lse is not None else None
    return ResponseForward(seq_logps, seq_tokens, aux, aligned)
