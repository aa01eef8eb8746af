"""A :class:`~preftune.reference.plan.ReferencePlan` to the reference source the trainer reads, and the one rule
for the references a library user hands the trainer directly."""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..losses import LossSpec
from ..model.lora import is_peft_model
from ..strategy import Strategy
from .plan import ReferencePlan
from .precompute import PrecomputeSetup, precompute_reference
from .sources import AdapterDisabledReference, ReferenceSource, model_reference


@dataclass
class ReferenceInputs:
    """What turning a plan into a source needs besides the plan."""

    policy: nn.Module  # the loaded policy, already LoRA-wrapped when the plan is adapters_off
    load: Callable[
        [str, str], nn.Module
    ]  # (folder, config key naming it) -> a model loaded as the policy was
    strategy: Strategy
    lm_head_chunk: int = 1024
    log: Callable[[str], Any] = print


def live_reference(
    plan: ReferencePlan, inputs: ReferenceInputs, model: nn.Module | None = None
) -> ReferenceSource:
    """The source that scores every batch: the policy with adapters off, or a frozen copy (``model`` if
    already loaded, else loaded from ``plan.path``)."""
    if plan.kind == "adapters_off":
        inputs.policy.to(inputs.strategy.device)  # where it will train; its forward-only pass runs there too
        return AdapterDisabledReference(inputs.policy, inputs.lm_head_chunk)
    if not plan.loads_model or plan.path is None:
        raise ValueError(f"a {plan.kind!r} reference has no model to score with")
    loaded = model if model is not None else inputs.load(plan.path, plan.path_key)
    return model_reference(loaded, inputs.strategy, inputs.lm_head_chunk)


def build_reference(
    plan: ReferencePlan, inputs: ReferenceInputs, precompute: PrecomputeSetup | None = None
) -> ReferenceSource | None:
    """The run's reference source (None for a reference-free loss). A precomputed plan needs ``precompute``
    (the rows to score); its live model is freed before this returns, so training never holds it."""
    if plan.kind == "none":
        return None
    if not plan.precompute:
        return live_reference(plan, inputs)
    if precompute is None or plan.cache_dir is None:
        raise ValueError(
            "a precomputed reference needs its pairs (precompute=PrecomputeSetup(...)) and a cache_dir"
        )
    # A separate reference model is loaded now (its weights key the cache); the policy's own starting weights
    # are hashed from the loaded policy, so reusing the cache loads no second model.
    loaded = inputs.load(plan.path, plan.path_key) if plan.kind == "model" and plan.path else None
    cached = precompute_reference(
        loaded if loaded is not None else inputs.policy,
        functools.partial(live_reference, plan, inputs, loaded),
        inputs.strategy,
        precompute,
        plan.cache_dir,
        inputs.log,
    )
    # The reference model is never needed again: free it before the policy's optimizer state is allocated.
    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return cached


def trainer_reference(
    loss: LossSpec,
    model: nn.Module,
    ref_model: nn.Module | None,
    reference: ReferenceSource | None,
    strategy: Strategy,
    lm_head_chunk: int,
) -> ReferenceSource | None:
    """The reference of a :class:`~preftune.DPOTrainer` built by hand: ``ref_model`` becomes a frozen model
    source, ``reference`` is used as given, a peft ``model`` with neither is its own adapters-off reference."""
    if ref_model is not None and reference is not None:
        raise ValueError("give either ref_model or reference, not both")
    if loss.reference_free:
        if ref_model is not None or reference is not None:
            raise ValueError(f"loss {loss.name!r} is reference-free; pass ref_model=None and no reference")
        return None
    if ref_model is not None:
        return model_reference(ref_model, strategy, lm_head_chunk)
    if reference is None and is_peft_model(model):
        return AdapterDisabledReference(model, lm_head_chunk)
    if reference is None:
        raise ValueError(f"loss {loss.name!r} needs a reference model (ref_model) or a reference source")
    return reference
