"""The layout seam: :class:`Batch` (model inputs plus the bookkeeping to score them), :class:`PairForward`
(per-pair results), the :class:`Layout` protocol, and the collate and scoring functions every layout shares.

A layout owns two things: ``collate`` (pairs -> :class:`Batch`) and ``pair_logps`` (scorer + batch ->
:class:`PairForward`). The trainer only sees this seam, so faster layouts slot in without touching the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from ..data.load import TokenizedGroup
from .plan import SegmentPlan

if TYPE_CHECKING:
    from ..data import TokenizedPair


@dataclass
class Batch:
    """Model inputs for S sequences (prompt + one response each) plus the token bookkeeping to score them.

    A batch of B pairs has S = 2B: B chosen, then B rejected. A batch of prompt groups (a prompt with K_g
    responses) numbers its sequences group by group: group 0's responses, then group 1's, ...
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
    num_pairs: int
    num_tokens: int  # non-pad tokens over all sequences, counted once per sequence
    rows: list[tuple[str, int]] = field(
        default_factory=list
    )  # (source, index) of each pair, for error messages
    # Segment layouts lay every sequence in one row and say here which tokens attend to which.
    attention_plan: SegmentPlan | None = None
    pair_ids: Tensor | None = None  # (B,) each pair_id / group_id, for a precomputed reference
    # Group batches only (pair batches leave them None): (S,) the group each sequence answers, and its score.
    sequence_group: Tensor | None = None
    sequence_scores: Tensor | None = None
    # LD-DPO only: (N,) float32, 1 on a response's first l tokens (l = the shorter response of its pair), ld_alpha
    # after; decided here, when the batch is made, so every layout and every model sums the same tokens alike.
    score_weights: Tensor | None = None
    ld_alpha: float | None = None  # the loss.ld_alpha score_weights was made with (None: plain sums)

    @property
    def num_sequences(self) -> int:
        return 2 * self.num_pairs if self.sequence_group is None else int(self.sequence_group.numel())

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
    # Only when asked for (WPO): each response's :func:`mean_aligned_logps`, no gradient.
    chosen_aligned: Tensor | None = None  # (B,)
    rejected_aligned: Tensor | None = None  # (B,)


@dataclass
class ResponseForward:
    """Per-sequence results of one forward, in sequence order."""

    logps: Tensor  # (S,) summed response log-probs (weighted by Batch.score_weights under LD-DPO)
    tokens: Tensor  # (S,) response token counts
    aux_loss: Tensor | None = None
    aligned: Tensor | None = None  # (S,) :func:`mean_aligned_logps`, only when asked for (WPO)


@dataclass(frozen=True)
class PromptGroup:
    """One prompt with the responses a layout lays out after it, and each response's sequence number."""

    prompt: list[int]
    responses: list[list[int]]
    sequences: list[int]


class Layout(Protocol):
    """How pairs (or prompt groups) become one forward: ``collate`` (pairs -> :class:`Batch`),
    ``collate_groups`` (prompts with K responses each -> :class:`Batch`), ``pair_logps`` (scorer + batch ->
    :class:`PairForward`). Every layout is exact: the same per-response log-probs as ``padded``."""

    name: str

    def collate(self, pairs: list[TokenizedPair]) -> Batch: ...

    def collate_groups(self, groups: list[TokenizedGroup]) -> Batch: ...

    @property
    def ld_alpha(self) -> float | None:
        """LD-DPO's alpha (``loss.ld_alpha``): ``collate`` weighs tokens past a pair's shared length by it."""
        ...

    def pair_logps(
        self, scorer: nn.Module, batch: Batch, want_aux: bool = False, want_aligned: bool = False
    ) -> PairForward: ...

    def laid_out_tokens(self, items: Sequence[TokenizedPair | TokenizedGroup]) -> int:
        """Tokens one micro-batch of ``items`` (pairs or prompt groups) feeds the model in this layout: what
        ``train.micro_batch_tokens`` budgets."""
        ...


def pair_groups(pairs: list[TokenizedPair]) -> list[PromptGroup]:
    """Each pair as a group of two: its chosen response is sequence b, its rejected one sequence B + b."""
    n = len(pairs)
    return [
        PromptGroup(p.prompt_ids, [p.chosen_ids, p.rejected_ids], [b, n + b]) for b, p in enumerate(pairs)
    ]


def response_groups(groups: list[TokenizedGroup]) -> list[PromptGroup]:
    """Each group's responses numbered in order, group after group."""
    laid, start = [], 0
    for group in groups:
        k = len(group.responses)
        laid.append(PromptGroup(group.prompt_ids, group.responses, list(range(start, start + k))))
        start += k
    return laid


def laid_out_groups(items: Sequence[TokenizedPair | TokenizedGroup]) -> list[PromptGroup]:
    """``items`` as every layout sees them: a pair as a group of two, a prompt group as it is."""
    if items and isinstance(items[0], TokenizedGroup):
        return response_groups(list(items))  # type: ignore[arg-type]
    return pair_groups(list(items))  # type: ignore[arg-type]


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
    items: Sequence[TokenizedPair | TokenizedGroup],
    groups: list[PromptGroup],
    inputs: tuple[Tensor, Tensor | None, Tensor | None],
    scoring: Scoring,
    attention_plan: SegmentPlan | None = None,
    ld_alpha: float | None = None,
) -> Batch:
    """A batch of ``items`` (pairs or groups) laid out as ``groups``; ``inputs`` = (ids, mask, positions);
    ``ld_alpha`` (pairs only) gives it LD-DPO's :func:`shared_length_weights`."""
    score_from, score_targets, score_sequence = scoring.tensors()
    sequence_group = sequence_scores = None
    is_groups = bool(items) and isinstance(items[0], TokenizedGroup)
    if is_groups and ld_alpha is not None:
        raise ValueError("loss.ld_alpha: LD-DPO's shared length is that of a pair; not with prompt groups")
    if is_groups:  # prompt groups: each sequence's group and score
        scores = [item.scores for item in items if isinstance(item, TokenizedGroup)]
        owner = {
            s: (g, float(scores[g][k]))
            for g, group in enumerate(groups)
            for k, s in enumerate(group.sequences)
        }
        sequence_group = torch.tensor([owner[s][0] for s in range(len(owner))], dtype=torch.long)
        sequence_scores = torch.tensor([owner[s][1] for s in range(len(owner))], dtype=torch.float64)
    return Batch(
        input_ids=inputs[0],
        attention_mask=inputs[1],
        position_ids=inputs[2],
        score_from=score_from,
        score_targets=score_targets,
        score_sequence=score_sequence,
        num_pairs=len(items),
        num_tokens=sequence_tokens(groups),
        rows=[(p.source, p.index) for p in items],
        attention_plan=attention_plan,
        # Items without an id (e.g. built by hand) get -1: only a cached reference needs one.
        pair_ids=torch.tensor(
            [getattr(p, "pair_id", getattr(p, "group_id", -1)) for p in items], dtype=torch.long
        ),
        sequence_group=sequence_group,
        sequence_scores=sequence_scores,
        score_weights=None if ld_alpha is None else shared_length_weights(groups, ld_alpha),
        ld_alpha=ld_alpha,
    )


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


def score_pairs(
    scorer: nn.Module, batch: Batch, want_aux: bool = False, want_aligned: bool = False
) -> PairForward:
    """:func:`score_responses` of a pair batch, split into its chosen and rejected halves."""
    if batch.sequence_group is not None:
        raise ValueError("a batch of prompt groups has no chosen/rejected halves; use score_responses")
    out, b = score_responses(scorer, batch, want_aux, want_aligned), batch.num_pairs
    aligned = out.aligned
    return PairForward(
        out.logps[:b],
        out.logps[b:],
        out.tokens[:b],
        out.tokens[b:],
        out.aux_loss,
        aligned[:b] if aligned is not None else None,
        aligned[b:] if aligned is not None else None,
    )
