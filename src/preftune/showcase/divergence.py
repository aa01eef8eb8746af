"""Log-probabilities of sampled responses and a Monte Carlo estimate of KL(policy || reference) from them.

The responses are scored with the trainer's own machinery (a layout's batch, :func:`score_responses` and
:class:`SequenceScorer`, chunked LM head), not a second implementation: each sample is a row of one response.
"""

from __future__ import annotations

import torch
from torch import nn

from ..data import Row
from ..layouts import build_layout
from ..model.generation import Sample
from ..model.responses import score_responses
from ..model.scorer import SequenceScorer


@torch.no_grad()
def response_logps(
    model: nn.Module, samples: list[list[Sample]], pad_token_id: int, batch_rows: int = 16
) -> list[float]:
    """log p(response | prompt) under ``model`` for every sample, flattened in order (prompt by prompt).

    Responses without tokens score 0. The model is put in eval mode (no dropout) and restored afterwards.
    """
    flat = [sample for group in samples for sample in group]
    rows = [Row(s.prompt_ids, [s.response_ids], [0.0], "samples", i) for i, s in enumerate(flat)]
    layout = build_layout("padded", pad_token_id)
    scorer = SequenceScorer(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logps: list[float] = []
    try:
        for start in range(0, len(rows), batch_rows):
            batch = layout.collate(rows[start : start + batch_rows]).to(device)
            logps.extend(score_responses(scorer, batch).logps.tolist())  # one response per row: row order
    finally:
        model.train(was_training)
    return logps


def kl_estimate(policy_logps: list[float], reference_logps: list[float]) -> float:
    """Monte Carlo KL(policy || reference) per response: mean over responses y ~ policy of
    log pi(y|x) - log ref(y|x), i.e. the sum over the response's tokens of the per-token log-ratio.

    Unbiased when the responses were sampled from the policy itself at temperature 1 without truncation;
    a single sample can be negative, the mean converges to a value >= 0.
    """
    if not policy_logps or len(policy_logps) != len(reference_logps):
        raise ValueError("kl_estimate needs as many reference log-probs as policy log-probs (at least one)")
    return sum(p - r for p, r in zip(policy_logps, reference_logps, strict=True)) / len(policy_logps)
