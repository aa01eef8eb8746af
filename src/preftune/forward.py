"""Batch layouts: how (prompt, chosen, rejected) pairs become one forward pass and per-sequence log-probs.

A layout owns two things: ``collate`` (pairs -> :class:`Batch`) and ``pair_logps`` (model + batch ->
:class:`PairForward`). The trainer only sees this seam, so faster layouts slot in without touching the loop.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from .logps import chunked_token_logps, sum_per_sequence
from .segments import PLAN_KWARG, SegmentPlan, decoder_of, enable_segment_attention

if TYPE_CHECKING:
    from .data import TokenizedPair


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


class SequenceScorer(nn.Module):
    """Wraps a causal LM so one ``forward`` returns log-probs of selected tokens, never full logits.

    Strategies wrap this module (DDP, FSDP2) rather than the bare LM, so their forward hooks see the call.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 1024) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        config = getattr(model, "config", None)
        for attr in ("final_logit_softcapping", "logit_scale"):
            if getattr(config, attr, None) not in (None, 1.0):
                raise NotImplementedError(
                    f"models with config.{attr} are not supported by the chunked LM head yet"
                )

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
        score_from: Tensor,
        score_targets: Tensor,
        want_aux: bool = False,
        attention_plan: SegmentPlan | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        lm: Any = self.model
        decoder = decoder_of(lm)
        extra: dict[str, Any] = {"output_router_logits": True} if want_aux else {}
        calls_before = 0
        if attention_plan is not None:
            enable_segment_attention(lm)  # idempotent; a reference model meets its first plan here
            extra[PLAN_KWARG] = attention_plan
            calls_before = attention_plan.calls
        out = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **extra,
        )
        if attention_plan is not None and attention_plan.calls == calls_before:
            raise RuntimeError(
                f"{type(lm).__name__}'s attention ignored the segment plan; use --train.layout padded"
            )
        hidden = out.last_hidden_state
        head = lm.get_output_embeddings()
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, score_from)
        token_logps = chunked_token_logps(picked, head.weight, score_targets, head.bias, self.chunk_size)
        aux = _moe_aux_loss(lm, out.router_logits, attention_mask) if want_aux else None
        return token_logps, aux


def _moe_aux_loss(
    lm: nn.Module, router_logits: tuple[Tensor, ...] | None, attention_mask: Tensor | None
) -> Tensor:
    """The model family's own load-balancing loss (Mixtral, Qwen2-MoE, ...), looked up from its module."""
    inner: Any = lm
    if hasattr(inner, "get_base_model"):  # a peft wrapper: the model family is that of the model inside
        lm = inner.get_base_model()
    loss_fn = getattr(sys.modules[type(lm).__module__], "load_balancing_loss_func", None)
    if loss_fn is None or not router_logits:
        raise ValueError(f"loss.aux_loss_coef > 0 but {type(lm).__name__} has no MoE router to balance")
    cfg: Any = lm.config
    num_experts = getattr(cfg, "num_local_experts", None) or cfg.num_experts
    mask = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
    return loss_fn(router_logits, num_experts, cfg.num_experts_per_tok, mask)


class Layout(Protocol):
    name: str

    def collate(self, pairs: list[TokenizedPair]) -> Batch: ...

    def pair_logps(self, scorer: nn.Module, batch: Batch, want_aux: bool = False) -> PairForward: ...


def _split_pairs(seq_logps: Tensor, seq_tokens: Tensor, num_pairs: int, aux: Tensor | None) -> PairForward:
    return PairForward(
        chosen_logps=seq_logps[:num_pairs],
        rejected_logps=seq_logps[num_pairs:],
        chosen_tokens=seq_tokens[:num_pairs],
        rejected_tokens=seq_tokens[num_pairs:],
        aux_loss=aux,
    )


def _sequences(pairs: list[TokenizedPair]) -> tuple[list[list[int]], list[list[int]]]:
    """(responses, full sequences) of the 2B sequences: chosen ones first, then rejected, each after its prompt."""
    prompts = [p.prompt_ids for p in pairs]
    responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    return responses, [prompt + resp for prompt, resp in zip(prompts + prompts, responses, strict=True)]


def _batch(
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


class PaddedLayout:
    """Chosen and rejected concatenated into one right-padded batch: the plain reference layout.

    Example, pad id 0, two pairs with prompts [5, 6] / [7] and responses c1=[8], r1=[9, 2], c2=[3, 2], r2=[4]:

        input_ids       = [[5, 6, 8, 0],   # prompt1 + chosen1
                           [7, 3, 2, 0],   # prompt2 + chosen2
                           [5, 6, 9, 2],   # prompt1 + rejected1
                           [7, 4, 0, 0]]   # prompt2 + rejected2
        attention_mask  = 1 where a token exists, 0 on padding
        score_targets   = [8, 3, 2, 9, 2, 4]    score_sequence = [0, 1, 1, 2, 2, 3]
        score_from      = flat index of the position just before each target: [1, 4, 5, 9, 10, 12]
    """

    name = "padded"

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def collate(self, pairs: list[TokenizedPair]) -> Batch:
        responses, sequences = _sequences(pairs)
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        score_from: list[int] = []
        score_targets: list[int] = []
        score_sequence: list[int] = []
        for row, (seq, resp) in enumerate(zip(sequences, responses, strict=True)):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            attention_mask[row, : len(seq)] = 1
            first = len(seq) - len(resp)
            score_from.extend(range(row * width + first - 1, row * width + len(seq) - 1))
            score_targets.extend(resp)
            score_sequence.extend([row] * len(resp))
        scoring = (score_from, score_targets, score_sequence)
        return _batch(pairs, sequences, input_ids, attention_mask, None, scoring)

    def pair_logps(self, scorer: nn.Module, batch: Batch, want_aux: bool = False) -> PairForward:
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
        ones = torch.ones_like(token_logps)
        seq_tokens = sum_per_sequence(ones, batch.score_sequence, num_seqs)
        return _split_pairs(seq_logps, seq_tokens, batch.num_pairs, aux)
