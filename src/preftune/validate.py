"""One check of a whole configuration before anything loads: each field in range (:mod:`preftune.config`), then
each section's meaning, checked by the part of preftune that owns it. The CLI, the builder and ``preftune
iterate`` call it; a hand-built :class:`~preftune.DPOTrainer` checks its own loss section the same way."""

from __future__ import annotations

from typing import Any

from .config import Config, check_fields, config_from_args
from .layouts import check_layout_config
from .losses import check_loss_config
from .model.lora import check_lora_setup
from .reference.plan import plan_reference


def validate(cfg: Config, world_size: int = 1, training: bool = True) -> None:
    """Refuse inconsistent values with a message naming the key; cheap, runs before models load.

    ``training`` False (``preftune eval``) leaves out what only training reads: the optimizer, checkpoints and
    the batch arithmetic of optimizer steps.
    """
    check_fields(cfg, world_size, training)
    check_loss_config(cfg.loss)
    check_layout_config(cfg.train, cfg.loss)
    check_lora_setup(cfg)
    plan_reference(cfg)  # refuses a combination that leaves no valid reference


def validated_config(
    argv: list[str], defaults: dict[str, Any] | None = None, training: bool = True
) -> Config:
    """:func:`~preftune.config.config_from_args`, then :func:`validate`: what a command line reads, whole."""
    cfg = config_from_args(argv, defaults, training)
    validate(cfg, training=training)
    return cfg
