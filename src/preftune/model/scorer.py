"""The scorer: a causal LM wrapped so one forward returns log-probs of the scored tokens, never full logits."""

from __future__ import annotations

import sys
from typing import Any

from torch import Tensor, nn

from ..layouts.attention import decoder_of, enable_segment_attention
from ..layouts.plan import PLAN_KWARG, SegmentPlan
from .logps import chunked_token_logps, chunked_token_logps_lse


class SequenceScorer(nn.Module):
    """Wraps a causal LM so one ``forward`` returns log-probs of selected tokens, never full logits.

    ``forward`` returns (token log-probs (N,), the MoE aux loss or None, per-token (lse(z), lse(2z)) as (N, 2)
    without gradient, or None); the last only with ``want_lse`` (WPO's weight), so it costs nothing otherwise.

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
        want_lse: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        lm: Any = self.model
        decoder = decoder_of(lm)
        extra: dict[str, Any] = {"output_router_logits": True} if want_aux else {}
        calls_before = 0
        if attention_plan is not None:
            # The one place a model is switched to segment attention, for good, on the first plan it meets
            # (idempotent); calls without a plan still go to its previous attention.
            enable_segment_attention(lm)
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
        lse: Tensor | None = None
        if want_lse:
            token_logps, lse = chunked_token_logps_lse(
                picked, head.weight, score_targets, head.bias, self.chunk_size
            )
        else:
            token_logps = chunked_token_logps(picked, head.weight, score_targets, head.bias, self.chunk_size)
        aux = moe_aux_loss(lm, out.router_logits, attention_mask) if want_aux else None
        return token_logps, aux, lse


def moe_aux_loss(
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
