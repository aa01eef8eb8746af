"""How a strategy is chosen and configured from a run's config: the one place strategy settings are decided."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from ..config import Config, ConfigError


@dataclass(frozen=True)
class StrategyOptions:
    """A strategy's settings beyond its name; each strategy reads those it has."""

    ref_offload: bool = False  # ddp, fsdp2, deepspeed: keep a frozen reference whole on CPU
    mixed_precision: str = "none"  # fsdp2: "bf16" computes in bf16 and reduces in fp32
    cpu_offload: bool = False  # fsdp2: sharded parameters and optimizer state on CPU
    ds_config: dict[str, Any] | None = None  # deepspeed: the resolved DeepSpeed JSON

    @property
    def compute_precision(self) -> str:
        """What models compute in beyond their weights' dtype (FSDP2 or DeepSpeed mixed precision); it changes
        reference log-probs, so the reference cache's key includes it."""
        for name in ("bf16", "fp16"):
            if (self.ds_config or {}).get(name, {}).get("enabled"):
                return f"deepspeed-{name}"
        return f"mixed_precision={self.mixed_precision}"


def strategy_options(cfg: Config, world_size: int, ref_offload: bool) -> StrategyOptions:
    """The options ``strategy.*`` gives, refusing what this launch cannot run (naming the key)."""
    name = cfg.strategy.name
    if name == "single" and world_size > 1:
        raise ConfigError(
            f"strategy.name: single, but torchrun started {world_size} processes; use ddp or fsdp2"
        )
    if name != "single" and "RANK" not in os.environ:
        raise ConfigError(
            f"strategy.name: {name} needs torchrun (torchrun --nproc_per_node N -m preftune train ...)"
        )
    if cfg.strategy.cpu_offload and not torch.cuda.is_available():
        # PyTorch's CPUOffloadPolicy needs an accelerator even to initialise (see the README).
        raise ConfigError(
            "strategy.cpu_offload: FSDP2 CPU offload needs a GPU; on CPU the shards already live in RAM"
        )
    if name == "single":
        return StrategyOptions()
    if name == "fsdp2":
        return StrategyOptions(ref_offload, cfg.strategy.mixed_precision, cfg.strategy.cpu_offload)
    if name == "deepspeed":
        from .deepspeed_strategy import build_ds_config

        return StrategyOptions(ref_offload, ds_config=build_ds_config(cfg, world_size))
    return StrategyOptions(ref_offload)
