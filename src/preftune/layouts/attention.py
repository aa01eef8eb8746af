"""Attention over the segments of one long row: what lets the packed and prefix-shared layouts skip padding.

The plan (:mod:`preftune.layouts.plan`) reaches the attention function as a keyword argument that transformers
passes from the decoder's ``forward`` down to ``ALL_ATTENTION_FUNCTIONS``; the function gathers the segments into
the plan's padded (segments x queries x keys) grid and makes one SDPA call over it with the grid's mask, so no
(T x T) mask is built and the linear layers compute no padding.

It is registered with transformers' ``AttentionInterface`` (:func:`enable_segment_attention`); calls without a
plan fall through to the model's previous attention, so generation and padded batches are unchanged.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .plan import PLAN_KWARG, Segment, SegmentPlan

SEGMENT_ATTENTION = "preftune_segments"


def decoder_of(model: nn.Module) -> nn.Module:
    """The causal LM's decoder stack (the model without its LM head)."""
    lm: Any = model
    return lm.get_decoder() if hasattr(lm, "get_decoder") else getattr(lm, lm.base_model_prefix)


def _fallback(module: nn.Module) -> Any:
    """The attention function the model used before segments were enabled (for calls without a plan)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    config: Any = getattr(module, "config", None)
    name = str(getattr(config, "_attn_implementation", "")).partition("|")[2] or "sdpa"
    if name == "eager":  # eager is each model file's own function, not an interface entry
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[name]


def _segment_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """transformers' attention-function signature: (B, H, T, D) inputs, returns (B, T, H, D)."""
    plan: SegmentPlan | None = kwargs.pop(PLAN_KWARG, None)
    if plan is None:  # a padded batch, generation, eval by other code: the model's own attention
        return _fallback(module)(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if query.shape[0] != 1 or query.shape[2] != plan.length:
        raise RuntimeError(f"segment plan covers {plan.length} tokens of one row, got {tuple(query.shape)}")
    g = plan.grid(query.device)
    window = kwargs.get("sliding_window")
    if window is not None and g.keys > window:  # g.keys: the most keys any segment's queries see
        raise RuntimeError(f"a segment spans {g.keys} keys, beyond the model's sliding window of {window}")
    plan.calls += 1
    gqa = key.shape[1] != query.shape[1]  # grouped-query attention: fewer key/value heads
    dropout_p = dropout if module.training else 0.0
    # Gather the row into a padded (segments, heads, queries, head_dim) grid and run one SDPA call: per-segment
    # calls measured 7x slower in backward on CPU. Only attention sees the padding; the linear layers stay
    # padding-free. Masked cells contribute exact zeros, so each query attends to the same keys as in its own
    # padded sequence.

    def gather(x: Tensor, index: Tensor, width: int) -> Tensor:
        heads, dim = x.shape[1], x.shape[3]
        return x[0].index_select(1, index).view(heads, g.segments, width, dim).transpose(0, 1)

    out = F.scaled_dot_product_attention(
        gather(query, g.query_index, g.queries), gather(key, g.key_index, g.keys),
        gather(value, g.key_index, g.keys), attn_mask=g.mask, dropout_p=dropout_p, scale=scaling, enable_gqa=gqa,
    )  # fmt: skip
    # (segments, heads, queries, dim) -> (heads, segments x queries, dim) -> the row's positions, in order.
    flat = out.transpose(0, 1).reshape(out.shape[1], g.segments * g.queries, out.shape[3])
    return flat.index_select(1, g.back_index).transpose(0, 1).unsqueeze(0).contiguous(), None


def enable_segment_attention(model: nn.Module) -> None:
    """Route ``model``'s attention through the segment function, for good (idempotent).

    The new implementation is named ``preftune_segments|<previous>``: calls without a plan go to the previous
    one, and masks are built by the previous one's mask builder, so padded batches and generation are unchanged.
    It is set for good rather than around each call because activation checkpointing re-runs the forward in
    backward, after any such context has ended. The name is not saved with the model (transformers keeps it out
    of config.json), so an exported model loads with its usual attention.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    config: Any = model.config
    current = str(config._attn_implementation or "sdpa")
    if current.startswith(SEGMENT_ATTENTION):
        return
    name = f"{SEGMENT_ATTENTION}|{current}"
    AttentionInterface.register(name, _segment_attention_forward)
    if current in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    config._attn_implementation = name


def supports_segments(model: nn.Module) -> bool:
    """True when ``model``'s attention layers receive the plan (they use transformers' attention interface and
    pass keyword arguments through); remote or older model code may not.

    Probes with a 3-token plan and leaves the model's attention as it found it: the one place that switches a
    model to segment attention is :class:`~preftune.model.scorer.SequenceScorer`, on the first plan it meets.
    """
    decoder = decoder_of(model)
    plan = SegmentPlan([Segment(0, 2), Segment(2, 3, 0, 1)])
    device = next(model.parameters()).device
    config: Any = model.config
    before = config._attn_implementation
    try:
        enable_segment_attention(model)
        with torch.no_grad():
            decoder(
                input_ids=torch.zeros((1, 3), dtype=torch.long, device=device),
                position_ids=torch.tensor([[0, 1, 1]], device=device),
                use_cache=False,
                **{PLAN_KWARG: plan},
            )
    except (RuntimeError, TypeError, ValueError, KeyError, AttributeError):
        plan.calls = 0
    finally:
        config._attn_implementation = before
    layers = getattr(model.config, "num_hidden_layers", None)
    return plan.calls > 0 and (layers is None or plan.calls == layers)
