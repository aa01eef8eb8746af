"""Reference sources: the seam the trainer reads reference log-probs through, and the live sources
(a separate frozen model; the LoRA policy with its adapters disabled). A precomputed table
(:class:`~preftune.reference.cache.CachedReference`) slots in behind the same seam."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..layouts import Batch
from ..model.responses import ResponseForward, score_responses
from ..model.scorer import SequenceScorer
from ..strategy import Strategy
from ..strategy.mixing import paired_parameters
from .lora_deltas import LoraDeltas


class ReferenceSource(Protocol):
    def response_logps(self, batch: Batch) -> ResponseForward:
        """Reference log-probs and token counts of every response of a batch, in sequence order (no gradient)."""
        ...

    def state_for_checkpoint(self) -> dict[str, str]:
        """What a resumed run needs to rebuild the same reference (e.g. a cache key); may be empty."""
        ...


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode, no gradients: the reference never trains and never gets optimizer state."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


class LiveReference:
    """A reference that runs a forward per batch, in the batch's own layout. Subclasses say how one forward
    runs (:meth:`_run`)."""

    scorer: nn.Module

    def response_logps(self, batch: Batch) -> ResponseForward:
        return self._run(lambda b: score_responses(self.scorer, b), batch)

    def _run(self, score: Callable[[Batch], ResponseForward], batch: Batch) -> ResponseForward:
        raise NotImplementedError

    def state_for_checkpoint(self) -> dict[str, str]:
        return {}

    # TR-DPO (ref.sync_steps): a live reference can move towards the policy; each kind says how.

    def sync_from(self, policy: nn.Module, alpha: float, strategy: Strategy) -> None:
        """This reference <- ``alpha`` x ``policy`` + (1 - ``alpha``) x this reference (``policy`` prepared)."""
        raise NotImplementedError

    def check_sync(self, policy: nn.Module, strategy: Strategy) -> None:
        """Refuse, before training, a reference that :meth:`sync_from` could not mix with ``policy``."""

    def save_synced(self, folder: Path, strategy: Strategy) -> None:
        """Write what the syncs changed into the new folder ``folder`` (every process calls it)."""
        raise NotImplementedError

    def load_synced(self, folder: Path, strategy: Strategy) -> None:
        raise NotImplementedError


class ModelReference(LiveReference):
    """A separate frozen model scored with the same layout as the policy (one forward per step)."""

    def __init__(self, scorer: nn.Module) -> None:
        self.scorer = scorer

    def _run(self, score: Callable[[Batch], ResponseForward], batch: Batch) -> ResponseForward:
        """``score(batch)`` without gradient; an offloaded reference runs where its weights are, and only the
        per-sequence results travel back."""
        device = next(self.scorer.parameters()).device
        with torch.no_grad():
            if device == batch.input_ids.device:
                return score(batch)
            out, back = score(batch.to(device)), batch.input_ids.device
            moved = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
            return dataclasses.replace(
                out, **{k: v.to(back) for k, v in moved.items() if isinstance(v, Tensor)}
            )

    def sync_from(self, policy: nn.Module, alpha: float, strategy: Strategy) -> None:
        strategy.mix_weights(
            self.scorer, policy, alpha
        )  # how the weights are held is the strategy's business

    def check_sync(self, policy: nn.Module, strategy: Strategy) -> None:
        try:
            list(paired_parameters(strategy.unwrap(self.scorer), strategy.unwrap(policy)))
        except ValueError as exc:
            raise ValueError(
                f"ref.sync_steps: the reference cannot be mixed with the policy: {exc}"
            ) from None

    def save_synced(self, folder: Path, strategy: Strategy) -> None:
        strategy.save_frozen(folder, self.scorer)

    def load_synced(self, folder: Path, strategy: Strategy) -> None:
        strategy.load_frozen(folder, self.scorer)


def model_reference(model: nn.Module, strategy: Strategy, lm_head_chunk: int) -> ModelReference:
    """``model`` frozen and placed by the strategy for forward-only use (sharded, offloaded or copied)."""
    scorer = strategy.prepare_model(freeze(SequenceScorer(model, lm_head_chunk)), trainable=False)
    return ModelReference(scorer)


class AdapterDisabledReference(LiveReference):
    """The policy itself with its LoRA adapters switched off: the frozen base weights are the reference.

    ``peft_model`` is the (unwrapped) PeftModel the policy trains. Its own scorer is used, not the strategy's
    wrapper, so a no-grad pass never touches DDP's gradient bookkeeping. The pass runs in eval mode, as a
    separate frozen reference would, so no dropout applies; the policy's mode is restored afterwards, since it
    is in the middle of a training step (the trainer switches the whole model, so one flag says its mode).
    """

    def __init__(self, peft_model: nn.Module, lm_head_chunk: int = 1024) -> None:
        self.peft_model: Any = peft_model
        self.scorer = SequenceScorer(peft_model, lm_head_chunk)
        self.deltas = LoraDeltas(peft_model)  # what TR-DPO syncs add to the base weights; none until then

    def _run(self, score: Callable[[Batch], ResponseForward], batch: Batch) -> ResponseForward:
        was_training = self.scorer.training
        self.scorer.eval()
        try:
            with torch.no_grad(), self.peft_model.disable_adapter(), self.deltas.applied():
                return score(batch)
        finally:
            self.scorer.train(was_training)

    def sync_from(self, policy: nn.Module, alpha: float, strategy: Strategy) -> None:
        # The policy is this same peft model (under DDP each process holds identical adapters, so identical deltas).
        self.deltas.mix_from_adapters(alpha)

    def save_synced(self, folder: Path, strategy: Strategy) -> None:
        if strategy.is_main():
            self.deltas.save(folder)
        strategy.barrier()

    def load_synced(self, folder: Path, strategy: Strategy) -> None:
        self.deltas.load(folder)
