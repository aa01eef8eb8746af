"""A LoRA run's TR-DPO reference: the frozen base weights plus one dense delta per adapted layer.

The adapters-off reference is ``W`` for every adapted layer; after syncs it is ``W + D`` with ``D`` starting at
0 and each sync setting ``D <- alpha * (scale * B @ A) + (1 - alpha) * D``, which is exactly
``alpha * policy + (1 - alpha) * reference`` for that layer (the policy's layer is ``W + scale * B @ A``; all
other weights are frozen and shared). Mixing low-rank adapters instead would not be exact: a mix of two rank-r
products is in general not a rank-r product. Cost: one dense matrix per adapted layer in the base weight's
dtype (for all-linear, about a second copy of the model's non-embedding weights), allocated at the first sync.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..model.lora import ADAPTER
from ..strategy.mixing import mix_

DELTAS_FILE = "lora_deltas.safetensors"


class LoraDeltas:
    def __init__(self, peft_model: nn.Module) -> None:
        from peft.tuners.lora import LoraLayer

        self.layers: dict[str, Any] = {
            name: layer
            for name, layer in peft_model.named_modules()
            if isinstance(layer, LoraLayer) and ADAPTER in layer.lora_A
        }
        self.deltas: dict[str, Tensor] = {}  # empty until the first sync: D = 0 needs no memory and no work

    def mix_from_adapters(self, alpha: float) -> None:
        """One sync: each ``D`` moves towards the adapter's current dense update (peft's own merge math)."""
        with torch.no_grad():
            for name, layer in self.layers.items():
                delta = self.deltas.get(name)
                if delta is None:
                    delta = self.deltas[name] = torch.zeros_like(layer.get_base_layer().weight)
                mix_(delta, layer.get_delta_weight(ADAPTER), alpha)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Inside, each adapted layer's base computes with ``W + D``, one layer at a time: its weight is swapped
        for the sum just before its forward and the original tensor put back right after, so ``W`` itself is
        never rounded by an add-then-subtract."""
        if not self.deltas:
            yield
            return
        saved: dict[nn.Module, Tensor] = {}

        def merge(module: nn.Module, _: Any, delta: Tensor) -> None:
            weight: Any = module.weight
            saved[module] = weight.data
            weight.data = weight.data + delta

        def restore(module: nn.Module, *_: Any) -> None:
            weight: Any = module.weight
            weight.data = saved.pop(module)

        handles = []
        for name, layer in self.layers.items():
            base, delta = layer.get_base_layer(), self.deltas[name]
            handles.append(base.register_forward_pre_hook(lambda m, a, d=delta: merge(m, a, d)))
            handles.append(base.register_forward_hook(restore))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for module in list(saved):  # a forward that raised midway
                restore(module)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir()
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.deltas.items()}, str(folder / DELTAS_FILE)
        )

    def load(self, folder: Path) -> None:
        from safetensors.torch import load_file

        saved = load_file(str(folder / DELTAS_FILE))
        if saved.keys() != self.layers.keys():
            raise ValueError(f"{folder}: the saved LoRA deltas do not match this model's adapted layers")
        self.deltas = {}
        for name, layer in self.layers.items():
            weight = layer.get_base_layer().weight
            self.deltas[name] = saved[name].to(weight.device, weight.dtype)
