"""One micro-batch's losses: the policy (and reference) forward, the loss, and the objective backward runs on.

Every batch is rows of K >= 2 scored responses (a pair is K = 2): each response is scored once, and the loss
(:func:`~preftune.losses.compute_loss`) gives one value per row.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from ..config import LossConfig
from ..layouts import Batch
from ..losses import LossState, ResponseLogps, RowLossOutput, compute_loss
from ..losses.rows import at_row_extreme, sum_per_row
from ..model.responses import score_responses
from ..reference.sources import ReferenceSource


class MicroBatchLosses(NamedTuple):
    """A micro-batch's losses and what they came from."""

    objective: Tensor  # scalar that backward runs on: mean per-row loss, plus the MoE aux term
    per_row: Tensor  # (R,) loss, plus loss.nll_coef x nll
    loss: RowLossOutput  # the loss function's output: losses, rewards, a mixture's terms, WPO weights
    logps: ResponseLogps  # every response's policy (and reference) log-probs, token counts, scores, rows
    nll: Tensor  # (R,) per-token NLL of each row's top-scored response
    aux_loss: Tensor | None = None  # the MoE balancing loss of the policy forward, when asked for


def row_losses(
    scorer: nn.Module, reference: ReferenceSource | None, batch: Batch, cfg: LossConfig, state: LossState
) -> MicroBatchLosses:
    """Losses of R rows: per row, the loss (its pairs' WPO-weighted mean for a pairwise variant) plus
    ``loss.nll_coef`` times the top-scored response's per-token NLL (a pair's chosen one)."""
    _check_token_weights(batch, cfg)
    want_aux = cfg.aux_loss_coef > 0
    fwd = score_responses(scorer, batch, want_aux, want_aligned=cfg.wpo)
    ref = reference.response_logps(batch) if reference is not None else None
    device = fwd.logps.device
    logps = ResponseLogps(
        policy=fwd.logps,
        ref=ref.logps if ref is not None else None,
        tokens=fwd.tokens,
        scores=batch.sequence_scores.to(device),
        row=batch.sequence_row.to(device),
        num_rows=batch.num_rows,
        aligned=fwd.aligned,
    )
    out = compute_loss(logps, cfg, state)
    nll = best_response_nll(logps)
    per_row = out.losses + cfg.nll_coef * nll if cfg.nll_coef > 0 else out.losses
    return MicroBatchLosses(_objective(per_row, fwd.aux_loss, cfg), per_row, out, logps, nll, fwd.aux_loss)


def best_response_nll(logps: ResponseLogps) -> Tensor:
    """(R,) per-token NLL of each row's top-scored response (the mean over responses tied for the top): a
    pair's chosen-response NLL, so that micro-batch means compose exactly."""
    return row_mean(-logps.policy / logps.tokens.clamp(min=1), logps, at_row_extreme(logps, "amax"))


def row_mean(values: Tensor, logps: ResponseLogps, members: Tensor) -> Tensor:
    """(R,) each row's mean of per-response ``values`` over its responses where ``members`` (S,) holds; a row
    with one member gives that member's value exactly (a pair's chosen or rejected one)."""
    weight = members.to(values.dtype)
    summed = sum_per_row(values * weight, logps.row, logps.num_rows)
    return summed / sum_per_row(weight, logps.row, logps.num_rows)


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
