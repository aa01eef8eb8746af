"""The loss of every row (one prompt, K >= 2 responses ranked by score; a pair is K = 2), one loss per row.

Notation used by every docstring below, for the responses j, k of one row:

    h_k = policy_k - ref_k    (the response's log-ratio; log-probs summed over its tokens)
    z_k = beta h_k            (its implicit reward)
    s_k                       its score, higher is better; ties allowed
    ls(x) = log(sigmoid(x))

:func:`compute_loss` runs the variant named by ``cfg.type``: a listwise one (registered here with
:func:`register_group_loss`) reads each whole row; any pairwise one (:mod:`.pairwise`) runs over the response
pairs ``loss.pairs`` picks, weighted by ``loss.pair_weighting``. With K = 2 (two different scores) a listwise
variant is sigmoid DPO on (better, worse) exactly, and a pairwise one is itself on that pair, for any
loss.pairs, with the very numbers :func:`compute_pair_loss` gives on the pair.
All arithmetic runs in at least float32; outputs come back in the dtype of ``policy``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from .pairwise import wide
from .registry import (
    GroupLossFn,
    LossFn,
    LossState,
    PairLogps,
    ResponseLogps,
    RowLossOutput,
    get_loss,
    pair_loss,
    register_group_loss,
    reward_rounding,
)

if TYPE_CHECKING:
    from ..config import LossConfig


def compute_loss(logps: ResponseLogps, cfg: LossConfig, state: LossState | None = None) -> RowLossOutput:
    """Per-row loss and per-response detached rewards of ``cfg.type`` over a micro-batch of rows."""
    spec = get_loss(cfg.type)
    if not spec.reference_free and logps.ref is None:
        raise ValueError(
            f"loss {spec.name!r} needs reference log-probs but ref is None; give a reference model"
        )
    if spec.listwise:
        out = cast(GroupLossFn, spec.fn)(logps, cfg)
    else:
        out = pairwise_group_loss(
            logps, cfg, cast(LossFn, spec.fn), state if state is not None else LossState()
        )
    out.rounding = reward_rounding(logps.policy, logps.ref, cfg.beta)
    return out


# ---------------------------------------------------------------- shared pieces


def _rewards(x: ResponseLogps, cfg: LossConfig) -> Tensor:
    """z = beta (policy - ref), wide."""
    if x.ref is None:
        raise ValueError("this loss needs reference log-probs (ref)")
    return cfg.beta * (wide(x.policy) - wide(x.ref))


def _same_row(x: ResponseLogps) -> Tensor:
    """(S, S) bool: [k, j] is True when responses k and j answer the same prompt (are of one row)."""
    return x.row[:, None] == x.row[None, :]


def at_row_extreme(x: ResponseLogps, reduce: str) -> Tensor:
    """(S,) bool: the response's score is its row's top (reduce "amax") or bottom ("amin") score."""
    scores = wide(x.scores)
    extreme = scores.new_zeros(x.num_rows).scatter_reduce(0, x.row, scores, reduce, include_self=False)
    return scores == extreme[x.row]


def sum_per_row(values: Tensor, row: Tensor, num_rows: int) -> Tensor:
    """(R,) sums of ``values`` (one per response, or per pair) over the row index ``row`` of each."""
    return values.new_zeros(num_rows).index_add(0, row, values)


def _logsumexp_rows(z: Tensor, mask: Tensor) -> Tensor:
    """(S,) log sum_j exp(z_j) over the j where mask[k, j]; every row holds its own k, so none is empty."""
    return torch.logsumexp(z[None, :].expand_as(mask).masked_fill(~mask, float("-inf")), dim=1)


def _output(
    x: ResponseLogps,
    losses: Tensor,
    rewards: Tensor,
    terms: dict[str, Tensor] | None = None,
    weights: Tensor | None = None,
) -> RowLossOutput:
    dtype = x.policy.dtype
    kept = {name: term.detach().to(dtype) for name, term in (terms or {}).items()}
    shown = None if weights is None else weights.detach().to(dtype)
    return RowLossOutput(losses.to(dtype), rewards.detach().to(dtype), terms=kept, weights=shown)


# ---------------------------------------------------------------- listwise variants


@register_group_loss("plackett_luce")
def plackett_luce_loss(x: ResponseLogps, cfg: LossConfig) -> RowLossOutput:
    """Listwise DPO (Rafailov et al. 2023, appendix A.3): the Plackett-Luce loss of the ranking by score, summed.

        loss = sum_k [ log sum_{j: s_j <= s_k} exp(z_j) - z_k ]   = -sum_k log( e^{z_k} / sum_{j: s_j <= s_k} e^{z_j} )

    With distinct scores this is -log of the Plackett-Luce probability of the ranking (its last term is log 1 =
    0), and K = 2 is -ls(z_better - z_worse): sigmoid DPO exactly. Summed over k, not averaged, so that K = 2 is
    the pairwise loss; a group with more responses weighs more. Ties: equal scores form one rank, and each
    member's denominator runs over its own rank and every lower one (Breslow's rule for ties in Cox's partial
    likelihood): no order is asserted inside a tie, each term treats the tied members alike. At z = 0 the loss
    is sum_k log n_k, n_k = #{j : s_j <= s_k} (log K! with distinct scores). Rewards: z_k.
    """
    z = _rewards(x, cfg)
    scores = wide(x.scores)
    at_or_below = _same_row(x) & (scores[None, :] <= scores[:, None])  # [k, j]: j is in k's denominator
    terms = _logsumexp_rows(z, at_or_below) - z
    return _output(x, sum_per_row(terms, x.row, x.num_rows), z)


@register_group_loss("multi_negative")
def multi_negative_loss(x: ResponseLogps, cfg: LossConfig) -> RowLossOutput:
    """The best response against all the others: -log softmax of z over [best, others...].

        loss = log( e^{z_b} + sum_{j: s_j < s_b} e^{z_j} ) - z_b,   averaged over the b tied for the top score

    K = 2 is -ls(z_better - z_worse): sigmoid DPO exactly. Ties for best: each response tied for the top score
    is the best in turn, against every lower-scored response and never against another top one (no order is
    asserted inside the tie); the group's loss is the mean over them. At z = 0 the loss is log(1 + K - m), m the
    number tied for the top. Rewards: z_k.
    """
    z = _rewards(x, cfg)
    best = at_row_extreme(x, "amax")
    rivals = _same_row(x) & (~best[None, :] | torch.eye(len(z), dtype=torch.bool, device=z.device))
    terms = _logsumexp_rows(z, rivals) - z  # read only where k is a best response
    weights = best.to(z.dtype)
    per_group = sum_per_row(terms * weights, x.row, x.num_rows)
    return _output(x, per_group / sum_per_row(weights, x.row, x.num_rows), z)


# ---------------------------------------------------------------- every pairwise variant over response pairs


def expand_pairs(x: ResponseLogps, pairs: str) -> tuple[Tensor, Tensor]:
    """Index tensors (i, j), each (P,), of the pairs with s_i > s_j in one group that ``loss.pairs`` picks.

        all            every pair with different scores: K(K-1)/2 with distinct scores
        best_vs_rest   i tied for the group's top score, j any lower-scored response
        best_vs_worst  i tied for the top, j tied for the bottom: one pair when both are unique

    Tied scores never make a pair. One group with scores [3, 1, 2]: all -> i = [0, 0, 2], j = [1, 2, 1];
    best_vs_rest -> i = [0, 0], j = [1, 2]; best_vs_worst -> i = [0], j = [1]. Pairs come in (i, j) order.
    """
    scores = wide(x.scores)
    chosen = _same_row(x) & (scores[:, None] > scores[None, :])  # [i, j]: i beats j
    if pairs == "best_vs_rest":
        chosen &= at_row_extreme(x, "amax")[:, None]
    elif pairs == "best_vs_worst":
        chosen &= at_row_extreme(x, "amax")[:, None] & at_row_extreme(x, "amin")[None, :]
    elif pairs != "all":
        raise ValueError(
            f"loss.pairs: unknown pair selection {pairs!r}; choose all, best_vs_rest or best_vs_worst"
        )
    i, j = chosen.nonzero(as_tuple=True)
    return i, j


def _pair_weights(x: ResponseLogps, i: Tensor, j: Tensor, weighting: str) -> Tensor:
    gap = wide(x.scores[i]) - wide(x.scores[j])  # > 0: every pair's better response comes first
    if weighting == "gap":
        return gap
    if weighting == "uniform":
        return torch.ones_like(gap)
    raise ValueError(f"loss.pair_weighting: unknown weighting {weighting!r}; choose uniform or gap")


def pairwise_group_loss(x: ResponseLogps, cfg: LossConfig, fn: LossFn, state: LossState) -> RowLossOutput:
    """A pairwise variant ``fn`` over each group's pairs (:func:`expand_pairs`), as a weighted mean per group:

        loss_g = sum_p w_p loss(i_p, j_p) / sum_p w_p     over the pairs p of group g

    w_p = 1 (loss.pair_weighting uniform) or s_i - s_j (gap). loss(i, j) is the registry's own function on the
    pair (chosen i, rejected j), so no formula is copied here; a stateful variant (bco_pair) sees every pair of
    the micro-batch as one batch. With loss.wpo each pair's loss carries its own WPO weight exp(a_i + a_j), as
    on pair data, and a mixture's terms and the WPO weights come back as the same weighted means per row.
    Rewards: the variant's reward of each response, which depends on that response alone (read as the chosen side of a pair of the response with itself, with a copy of the state that is not
    updated). A row with no two different scores has no pair, and is refused.
    """
    i, j = expand_pairs(x, cfg.pairs)
    ref, aligned = x.ref, x.aligned
    pair_logps = PairLogps(
        policy_chosen=x.policy[i],
        policy_rejected=x.policy[j],
        ref_chosen=None if ref is None else ref[i],
        ref_rejected=None if ref is None else ref[j],
        chosen_tokens=x.tokens[i],
        rejected_tokens=x.tokens[j],
        chosen_aligned=None if aligned is None else aligned[i],
        rejected_aligned=None if aligned is None else aligned[j],
    )
    out = pair_loss(fn, pair_logps, cfg, state)
    weights = _pair_weights(x, i, j, cfg.pair_weighting).to(wide(out.losses).dtype)
    pair_row = x.row[i]
    total = sum_per_row(weights, pair_row, x.num_rows)
    if bool((total == 0).any()):
        empty = (total == 0).nonzero().flatten().tolist()
        raise ValueError(f"rows {empty} of the batch have no two responses with different scores, so no pair")

    def per_row(per_pair: Tensor) -> Tensor:
        """The weighted mean of a per-pair value over each row's pairs (a pair row: the value itself)."""
        return sum_per_row(weights * wide(per_pair), pair_row, x.num_rows) / total

    itself = PairLogps(x.policy, x.policy, ref, ref, x.tokens, x.tokens)
    rewards = fn(itself, cfg, LossState(dict(state.values), update=False)).chosen_rewards
    terms = {name: per_row(term) for name, term in out.terms.items()}
    wpo = None if out.weights is None else per_row(out.weights)
    return _output(x, per_row(out.losses), rewards, terms, wpo)
