"""Execution strategies behind one Protocol; ``build_strategy`` picks one from ``strategy.name``."""

from __future__ import annotations

from .base import Strategy, lockstep
from .options import StrategyOptions, strategy_options
from .single import SingleProcessStrategy

STRATEGY_NAMES = ("single", "ddp", "fsdp2", "deepspeed")


def build_strategy(
    name: str, accumulation_steps: int = 1, options: StrategyOptions | None = None
) -> Strategy:
    """The strategy named ``name``, configured by ``options`` (see :func:`strategy_options`)."""
    opts = options or StrategyOptions()
    if name == "single":
        return SingleProcessStrategy(accumulation_steps=accumulation_steps)
    if name == "ddp":
        # Imported here so one-process runs never touch torch.distributed.
        from .distributed import DDPStrategy

        return DDPStrategy(accumulation_steps, opts.ref_offload)
    if name == "fsdp2":
        from .distributed import FSDP2Strategy

        return FSDP2Strategy(accumulation_steps, opts.mixed_precision, opts.cpu_offload, opts.ref_offload)
    if name == "deepspeed":
        from .deepspeed_strategy import DeepSpeedStrategy

        if opts.ds_config is None:
            raise ValueError("the deepspeed strategy needs options.ds_config (see strategy_options)")
        return DeepSpeedStrategy(opts.ds_config, accumulation_steps, opts.ref_offload)
    raise ValueError(f"strategy.name: unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")


__all__ = [
    "STRATEGY_NAMES",
    "SingleProcessStrategy",
    "Strategy",
    "StrategyOptions",
    "build_strategy",
    "lockstep",
    "strategy_options",
]
