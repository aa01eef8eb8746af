"""One micro-batch's losses: the policy (and reference) forward, the loss, and the objective backward runs on.

Two kinds of batch, one shape of result (:class:`MicroBatchLosses`): a batch of pairs goes through the
pairwise loss registry; a batch of prompt groups (``data.groups``) through the group losses, which read every
response of a prompt at once.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ..config import LossConfig
from ..layouts import Batch, Layout, PairForward
from ..layouts.batch import score_responses
from ..losses import (
    GroupLogps,
    GroupLossOutput,
    LossOutput,
    LossState,
    PairLogps,
    compute_group_loss,
    compute_loss,
)
from ..losses.groups import at_group_extreme, sum_per_group
from ..reference.sources import ReferenceSource


class MicroBatchLosses(NamedTuple):
    """A pair batch's, or (in brackets) a prompt-group batch's, losses and what they came from."""

    objective: Tensor  # scalar that backward runs on: mean per-pair (per-group) loss, plus the MoE aux term
    per_pair: Tensor  # (B,) loss, plus loss.nll_coef x nll  [(G,) loss]
    loss: LossOutput | GroupLossOutput  # the loss function's output: losses and rewards
    policy: (
        PairForward | GroupLogps
    )  # the policy's summed log-probs and token counts [with ref, scores, groups]
    nll: Tensor  # (B,) per-token NLL of each chosen response  [zeros]


def pair_losses(
    scorer: nn.Module,
    reference: ReferenceSource | None,
    layout: Layout,
    batch: Batch,
    cfg: LossConfig,
    state: LossState,
) -> MicroBatchLosses:
    """Losses of B pairs: per pair, the loss (times its WPO weight with ``loss.wpo``) plus ``loss.nll_coef``
    times the chosen response's per-token NLL."""
    _check_token_weights(batch, cfg)
    want_aux = cfg.aux_loss_coef > 0
    fwd = layout.pair_logps(scorer, batch, want_aux=want_aux, want_aligned=cfg.wpo)
    ref = reference.pair_logps(batch) if reference is not None else None
    logps = PairLogps(
        policy_chosen=fwd.chosen_logps,
        policy_rejected=fwd.rejected_logps,
        ref_chosen=ref.chosen_logps if ref is not None else None,
        ref_rejected=ref.rejected_logps if ref is not None else None,
        chosen_tokens=fwd.chosen_tokens,
        rejected_tokens=fwd.rejected_tokens,
        chosen_aligned=fwd.chosen_aligned,
        rejected_aligned=fwd.rejected_aligned,
    )
    out = compute_loss(logps, cfg, state)
    # Per-token NLL of each chosen response, averaged per pair, so micro-batch means compose exactly.
    nll = -fwd.chosen_logps / fwd.chosen_tokens.clamp(min=1)
    per_pair = out.losses + cfg.nll_coef * nll if cfg.nll_coef > 0 else out.losses
    return MicroBatchLosses(_objective(per_pair, fwd.aux_loss, cfg), per_pair, out, fwd, nll)


def group_losses(
    scorer: nn.Module, reference: ReferenceSource | None, batch: Batch, cfg: LossConfig, state: LossState
) -> MicroBatchLosses:
    """Losses of G prompt groups: one per group, over all of its responses (each scored once)."""
    if batch.sequence_group is None or batch.sequence_scores is None:
        raise ValueError("a prompt-group loss needs a batch made by layout.collate_groups")
    _check_token_weights(batch, cfg)
    want_aux = cfg.aux_loss_coef > 0
    fwd = score_responses(scorer, batch, want_aux, want_aligned=cfg.wpo)
    ref = reference.response_logps(batch) if reference is not None else None
    device = fwd.logps.device
    logps = GroupLogps(
        policy=fwd.logps,
        ref=ref.logps if ref is not None else None,
        tokens=fwd.tokens,
        scores=batch.sequence_scores.to(device),
        group=batch.sequence_group.to(device),
        num_groups=batch.num_pairs,
        aligned=fwd.aligned,
    )
    out = compute_group_loss(logps, cfg, state)
    nll = best_response_nll(logps)
    per_group = out.losses + cfg.nll_coef * nll if cfg.nll_coef > 0 else out.losses
    return MicroBatchLosses(_objective(per_group, fwd.aux_loss, cfg), per_group, out, logps, nll)


def best_response_nll(logps: GroupLogps) -> Tensor:
    """(G,) per-token NLL of each group's top-scored response (the mean over responses tied for the top): a
    pair's chosen-response NLL when K = 2, so ``loss.nll_coef`` means the same on groups as on pairs."""
    is_top = at_group_extreme(logps, "amax").to(logps.policy.dtype)
    per_token = -logps.policy / logps.tokens.clamp(min=1)
    summed = sum_per_group(per_token * is_top, logps.group, logps.num_groups)
    return summed / sum_per_group(is_top, logps.group, logps.num_groups)


def _check_token_weights(batch: Batch, cfg: LossConfig) -> None:
    """A batch's LD-DPO weights are fixed when it is collated; one laid out for another loss.ld_alpha (a
    hand-built layout without it, say) would silently train on other sums, so it is refused."""
    if batch.ld_alpha != cfg.ld_alpha:
        raise ValueError(
            f"loss.ld_alpha is {cfg.ld_alpha} but the batch was collated with ld_alpha {batch.ld_alpha}; "
            "collate with build_layout(..., ld_alpha=loss.ld_alpha)"
        )


def _objective(per_item: Tensor, aux_loss: Tensor | None, cfg: LossConfig) -> Tensor:
    """What backward runs on: the mean loss, plus the MoE balancing term when loss.aux_loss_coef is on."""
    objective = per_item.mean()
    if cfg.aux_loss_coef > 0 and aux_loss is not None:
        objective = objective + cfg.aux_loss_coef * aux_loss
    return objective
