"""Field-level checks: each value in its range, read alone or with the fields of its own section. Cheap, and run
by :func:`~.loading.load_config` on every configuration read. What a value means for the rest of a run (a loss
name the registry knows, a layout the loss can use, a reference that exists) is checked by its owner, all of them
through :func:`preftune.validate.validate`."""

from __future__ import annotations

import math
import typing
from typing import Any

from ..errors import ConfigError
from .sections import (
    Config,
    DataConfig,
    IterateConfig,
    LoraConfig,
    LossConfig,
    OptimConfig,
    TrainConfig,
    leaf_fields,
)


def check(ok: bool, key: str, message: str) -> None:
    """Raise a :class:`ConfigError` naming ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


def check_fields(cfg: Config, world_size: int = 1, training: bool = True) -> None:
    """Every field of ``cfg`` in its range (``training`` False, for ``preftune eval``: not the optimizer,
    checkpoints, nor the batch arithmetic of optimizer steps)."""
    check_finite(cfg)
    check_loss_fields(cfg.loss)
    _check_train(cfg.train, world_size, training)
    _check_data(cfg.data)
    z = cfg.strategy.zero_stage
    check(z is None or 0 <= z <= 3, "strategy.zero_stage", f"must be 0, 1, 2 or 3, got {z}")
    if training:
        _check_optim(cfg.optim)
        check(cfg.ckpt.keep >= 1, "ckpt.keep", f"must be >= 1, got {cfg.ckpt.keep}")
        save = cfg.ckpt.save_steps
        check(save is None or save >= 1, "ckpt.save_steps", f"must be >= 1, got {save}")
    _check_iterate(cfg.iterate)
    _check_lora(cfg.lora)


def check_finite(cfg: Config) -> None:
    """No float setting is NaN or infinite (one set by hand on a section, too, not only one read by the loader)."""
    for key in leaf_fields():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        values = value if isinstance(value, list) else [value]
        bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
        check(not bad, key, f"must be a finite number, got {value!r}")


def check_loss_fields(loss: LossConfig) -> None:
    """The loss section's numbers and choices, as a hand-built :class:`LossConfig` may hold them."""
    for key in (
        "beta",
        "f_alpha",
        "simpo_gamma",
        "discopop_tau",
        "label_smoothing",
        "nll_coef",
        "aux_loss_coef",
    ):
        value = getattr(loss, key)
        check(math.isfinite(value), f"loss.{key}", f"must be a finite number, got {value!r}")
    check(loss.beta > 0, "loss.beta", f"must be > 0, got {loss.beta}")
    check(
        0 <= loss.label_smoothing < 0.5,
        "loss.label_smoothing",
        f"must be in [0, 0.5), got {loss.label_smoothing}",
    )
    check(loss.nll_coef >= 0, "loss.nll_coef", f"must be >= 0, got {loss.nll_coef}")
    check(loss.aux_loss_coef >= 0, "loss.aux_loss_coef", f"must be >= 0, got {loss.aux_loss_coef}")
    check(loss.discopop_tau > 0, "loss.discopop_tau", f"must be > 0, got {loss.discopop_tau}")
    alpha = loss.ld_alpha
    check(alpha is None or 0 < alpha <= 1, "loss.ld_alpha", f"must be in (0, 1] (or none: off), got {alpha}")
    if loss.weights is not None:
        check(all(math.isfinite(w) and w >= 0 for w in loss.weights) and any(loss.weights), "loss.weights",
              f"must be finite, >= 0 and not all 0, got {loss.weights}")  # fmt: skip
    for key in (
        "pairs",
        "pair_weighting",
        "f_divergence",
    ):  # set directly on a LossConfig, no loader to refuse
        choices = typing.get_args(typing.get_type_hints(LossConfig)[key])
        value = getattr(loss, key)
        check(value in choices, f"loss.{key}", f"{value!r} is not one of {', '.join(choices)}")


def _check_train(t: TrainConfig, world_size: int, training: bool) -> None:
    check(t.micro_batch_size >= 1, "train.micro_batch_size", f"must be >= 1, got {t.micro_batch_size}")
    check(t.lm_head_chunk >= 1, "train.lm_head_chunk", f"must be >= 1, got {t.lm_head_chunk}")
    check(t.micro_batch_tokens >= 0, "train.micro_batch_tokens", f"must be >= 0 (0 = off), got {t.micro_batch_tokens}")  # fmt: skip
    if not training:
        return
    check(t.batch_size >= 1, "train.batch_size", f"must be >= 1, got {t.batch_size}")
    per_step = t.micro_batch_size * world_size
    check(t.batch_size % per_step == 0, "train.batch_size",
          f"{t.batch_size} is not divisible by micro_batch_size x world_size = {t.micro_batch_size} x {world_size}")  # fmt: skip
    check(t.max_epochs >= 1, "train.max_epochs", f"must be >= 1, got {t.max_epochs}")
    check(t.max_steps is None or t.max_steps >= 1, "train.max_steps", f"must be >= 1, got {t.max_steps}")
    check(t.eval_steps is None or t.eval_steps >= 1, "train.eval_steps", f"must be >= 1, got {t.eval_steps}")
    check(
        t.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", f"must be >= 1, got {t.max_nonfinite_steps}"
    )
    check(t.logging_steps >= 1, "train.logging_steps", f"must be >= 1, got {t.logging_steps}")


def _check_optim(o: OptimConfig) -> None:
    check(o.lr > 0, "optim.lr", f"must be > 0, got {o.lr}")
    check(o.max_norm >= 0, "optim.max_norm", f"must be >= 0, got {o.max_norm}")
    check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    # Adam divides by sqrt(v) + eps: eps <= 0 can divide by zero (or by a negative) on a parameter without gradient.
    check(o.adam_eps > 0, "optim.adam_eps", f"must be > 0, got {o.adam_eps}")
    check(len(o.adam_betas) == 2 and all(0 <= b < 1 for b in o.adam_betas), "optim.adam_betas",
          f"must be two numbers in [0, 1), got {o.adam_betas}")  # fmt: skip
    check(0 <= o.warmup_ratio < 1, "optim.warmup_ratio", f"must be in [0, 1), got {o.warmup_ratio}")
    check(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}")


def _check_data(d: DataConfig) -> None:
    check(d.max_len >= 2, "data.max_len", f"must be >= 2, got {d.max_len}")
    check(d.max_prompt_len is None or d.max_prompt_len >= 1, "data.max_prompt_len",
          f"must be >= 1, got {d.max_prompt_len}")  # fmt: skip
    check(
        d.max_samples is None or d.max_samples >= 1, "data.max_samples", f"must be >= 1, got {d.max_samples}"
    )
    check(d.max_responses is None or d.max_responses >= 2, "data.max_responses",
          f"must be >= 2 (a best and a worst response), got {d.max_responses}")  # fmt: skip
    check(d.input_template is None or "{}" in d.input_template, "data.input_template",
          "must contain '{}' where the prompt goes")  # fmt: skip
    check(d.num_proc is None or d.num_proc >= 1, "data.num_proc", f"must be >= 1, got {d.num_proc}")
    if d.train_probs is not None:
        check(len(d.train_probs) == len(d.train), "data.train_probs",
              f"has {len(d.train_probs)} values for {len(d.train)} sources")  # fmt: skip
        check(all(p >= 0 for p in d.train_probs) and sum(d.train_probs) > 0, "data.train_probs",
              "must be non-negative with a positive sum")  # fmt: skip


def _check_iterate(it: IterateConfig) -> None:
    check(it.rounds >= 1, "iterate.rounds", f"must be >= 1, got {it.rounds}")
    check(it.samples_per_prompt >= 2, "iterate.samples_per_prompt",
          f"must be >= 2 (a pair needs two responses), got {it.samples_per_prompt}")  # fmt: skip
    check(it.min_score_gap >= 0, "iterate.min_score_gap", f"must be >= 0, got {it.min_score_gap}")
    check(it.max_new_tokens >= 1, "iterate.max_new_tokens", f"must be >= 1, got {it.max_new_tokens}")
    check(it.temperature > 0, "iterate.temperature", f"must be > 0, got {it.temperature}")
    check(0 < it.top_p <= 1, "iterate.top_p", f"must be in (0, 1], got {it.top_p}")
    for key in ("generation_batch_size", "reward_batch_size", "eval_samples_per_prompt"):
        value = getattr(it, key)
        check(value >= 1, f"iterate.{key}", f"must be >= 1, got {value}")


def _check_lora(lora: LoraConfig) -> None:
    check(lora.rank >= 0, "lora.rank", f"must be >= 0 (0 = off), got {lora.rank}")
    check(lora.alpha > 0, "lora.alpha", f"must be > 0, got {lora.alpha}")
    check(0 <= lora.dropout < 1, "lora.dropout", f"must be in [0, 1), got {lora.dropout}")
    check(lora.rank == 0 or bool(lora.target_modules), "lora.target_modules",
          "must name at least one module (or all-linear)")  # fmt: skip
