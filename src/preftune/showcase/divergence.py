"""Log-probabilities of sampled responses and a Monte Carlo estimate of KL(policy || reference) from them.

The responses are scored with the trainer's own machinery (a layout's batch and :class:`SequenceScorer`, chunked
LM head), not a second implementation: two samples of the same prompt form one "pair" (chosen and rejected
slots), so a batch scores them in one forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data import TokenizedPair
from ..layouts import build_layout
from ..model.generation import Sample
from ..model.scorer import SequenceScorer


def _as_pairs(samples: list[list[Sample]]) -> tuple[list[TokenizedPair], list[tuple[int, int]]]:
    """Samples grouped per prompt -> pairs of two responses to the same prompt, and for each sample its
    (pair, slot) position. An odd one out is paired with itself and read from the first slot only."""
    pairs: list[TokenizedPair] = []
    where: list[tuple[int, int]] = []
    for group in samples:
        for k in range(0, len(group), 2):
            first, second = group[k], group[min(k + 1, len(group) - 1)]
            where.append((len(pairs), 0))
            if k + 1 < len(group):
                where.append((len(pairs), 1))
            pairs.append(
                TokenizedPair(
                    first.prompt_ids, first.response_ids, second.response_ids, "samples", len(pairs)
                )
            )
    return pairs, where


@torch.no_grad()
def response_logps(
    model: nn.Module, samples: list[list[Sample]], pad_token_id: int, batch_pairs: int = 8
) -> list[float]:
    """log p(response | prompt) under ``model`` for every sample, flattened in order (prompt by prompt).

    Responses without tokens score 0. The model is put in eval mode (no dropout) and restored afterwards.
    """
    pairs, where = _as_pairs(samples)
    layout = build_layout("padded", pad_token_id)
    scorer = SequenceScorer(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chosen: list[float] = []
    rejected: list[float] = []
    try:
        for start in range(0, len(pairs), batch_pairs):
            batch = layout.collate(pairs[start : start + batch_pairs]).to(device)
            out = layout.pair_logps(scorer, batch)
            chosen.extend(out.chosen_logps.tolist())
            rejected.extend(out.rejected_logps.tolist())
    finally:
        model.train(was_training)
    return [(chosen if slot == 0 else rejected)[p] for p, slot in where]


def kl_estimate(policy_logps: list[float], reference_logps: list[float]) -> float:
    """Monte Carlo KL(policy || reference) per response: mean over responses y ~ policy of
    log pi(y|x) - log ref(y|x), i.e. the sum over the response's tokens of the per-token log-ratio.

    Unbiased when the responses were sampled from the policy itself at temperature 1 without truncation;
    a single sample can be negative, the mean converges to a value >= 0.
    """
    if not policy_logps or len(policy_logps) != len(reference_logps):
        raise ValueError("kl_estimate needs as many reference log-probs as policy log-probs (at least one)")
    return sum(p - r for p, r in zip(policy_logps, reference_logps, strict=True)) / len(policy_logps)
