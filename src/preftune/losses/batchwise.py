"""Pairwise variants whose per-pair term reads the other pairs of its micro-batch: AOT, and TRL's sft.

Notation as in :mod:`.pairwise`. These terms depend on how pairs are grouped into micro-batches: they are
computed per micro-batch on each process (as TRL computes them per device batch), so gradient accumulation,
several processes or ``train.micro_batch_tokens`` change which pairs share a term. With one pair per
micro-batch AOT is plain DPO and sft is that pair's own per-token NLL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .pairwise import log_ratios, loss_output, policy_averages, smoothed_logistic, wide
from .registry import LossOutput, LossState, PairLogps, register_loss

if TYPE_CHECKING:
    from ..config import LossConfig


def _sorted(values: Tensor) -> Tensor:
    return torch.sort(values, dim=0).values


@register_loss("aot")
def aot_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """AOT, paired (Melnyk et al. 2024): optimal transport between the distributions of the policy's and the
    reference's chosen-minus-rejected log-probs over the micro-batch, each sorted (k-th smallest to k-th):

        d_k = sort(pc - pr)_k - sort(rc - rr)_k;   loss_k = -(1-eps) ls(beta d_k) - eps ls(-beta d_k)

    TRL 1.16's "aot". Loss k belongs to no one pair (it matches the k-th quantiles); rewards are beta a, beta b.
    """
    a, b = log_ratios(x)
    policy = wide(x.policy_chosen) - wide(x.policy_rejected)
    assert x.ref_chosen is not None and x.ref_rejected is not None  # log_ratios checked
    reference = wide(x.ref_chosen) - wide(x.ref_rejected)
    d = _sorted(policy) - _sorted(reference)
    return loss_output(x, smoothed_logistic(cfg.beta * d, cfg.label_smoothing), cfg.beta * a, cfg.beta * b)


@register_loss("aot_unpaired")
def aot_unpaired_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """AOT, unpaired (Melnyk et al. 2024): the chosen log-ratios' distribution should dominate the rejected
    ones', matched quantile by quantile over the micro-batch:

        d_k = sort(a)_k - sort(b)_k;   loss_k = -(1-eps) ls(beta d_k) - eps ls(-beta d_k)

    TRL 1.16's "aot_unpaired". Rewards are beta a, beta b.
    """
    a, b = log_ratios(x)
    d = _sorted(a) - _sorted(b)
    return loss_output(x, smoothed_logistic(cfg.beta * d, cfg.label_smoothing), cfg.beta * a, cfg.beta * b)


@register_loss("sft", reference_free=True, reports_nll=True, f_divergence=True)
def sft_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """TRL's "sft" term (MPO's generation loss): the chosen tokens' NLL, token-weighted over the micro-batch:

        loss_k = -sum_i pc_i / sum_i lc_i     (the same for every pair k of the micro-batch)

    so a long response weighs more than a short one, unlike loss.nll_coef's per-pair mean -pc_k / lc_k. It reads
    no reference, so loss.f_divergence leaves it as it is (TRL accepts it in an f-divergence mixture too).
    Rewards: beta pc/lc and beta pr/lr, as the other reference-free variants.
    """
    # The micro-batch's chosen token count, as TRL's mean over the chosen mask (an empty response adds 0).
    nll = -wide(x.policy_chosen).sum() / wide(x.chosen_tokens).sum().clamp(min=1)
    ac, ar = policy_averages(x)
    return loss_output(x, nll.expand_as(ac), cfg.beta * ac, cfg.beta * ar)
