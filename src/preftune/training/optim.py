"""AdamW and the learning-rate schedules (warm-up then cosine-to-a-floor, linear, or constant)."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; biases and norm weights (1-D) get no weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    betas = (cfg.adam_betas[0], cfg.adam_betas[1])
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=betas, eps=cfg.adam_eps)


def _lr_multiplier(step: int, kind: str, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "constant":
        return 1.0
    if kind == "linear":
        return 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    """Multiplier of the peak LR at optimizer step s (0-based): warm-up for ceil(ratio x total) steps first.

    Example, cosine, total 10, warmup_ratio 0.2, min_lr_ratio 0.1: steps 0,1 -> 0.5, 1.0; step 2 -> 1.0;
    step 10 -> 0.1.
    """
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    # A partial of a module-level function keeps the scheduler's state_dict picklable for checkpoints.
    fn = partial(
        _lr_multiplier, kind=cfg.scheduler, warmup=warmup, total=total_steps, min_ratio=cfg.min_lr_ratio
    )
    return LambdaLR(optimizer, fn)


def planned_steps(steps_per_epoch: int, max_epochs: int, max_steps: int | None) -> int:
    """Optimizer steps a run takes: every epoch's, or ``train.max_steps`` if that comes first."""
    total = steps_per_epoch * max_epochs
    return total if max_steps is None else min(total, max_steps)
