"""Execution strategies behind one Protocol; ``build_strategy`` picks one from ``strategy.name``."""

from __future__ import annotations

from typing import Any

from .base import Strategy
from .single import SingleProcessStrategy

STRATEGY_NAMES = ("single", "ddp", "fsdp2", "deepspeed")


def build_strategy(name: str, accumulation_steps: int = 1, **options: Any) -> Strategy:
    """``options``: ref_offload (ddp, fsdp2, deepspeed), mixed_precision and cpu_offload (fsdp2),
    ds_config (deepspeed)."""
    if name == "single":
        return SingleProcessStrategy(accumulation_steps=accumulation_steps)
    if name in ("ddp", "fsdp2"):
        # Imported here so one-process runs never touch torch.distributed.
        from .distributed import DDPStrategy, FSDP2Strategy

        cls = DDPStrategy if name == "ddp" else FSDP2Strategy
        return cls(accumulation_steps=accumulation_steps, **options)
    if name == "deepspeed":
        from .deepspeed_strategy import DeepSpeedStrategy

        return DeepSpeedStrategy(accumulation_steps=accumulation_steps, **options)
    raise ValueError(f"strategy.name: unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")


__all__ = ["STRATEGY_NAMES", "SingleProcessStrategy", "Strategy", "build_strategy"]
