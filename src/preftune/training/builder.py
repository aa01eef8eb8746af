"""Config in, trainer out: everything ``preftune train`` builds, in order, each piece decided in its own module."""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import Config, ConfigError
from ..layouts import Layout, build_layout
from ..model import loading
from ..model.lora import wrap_lora
from ..reference import ReferencePlan, plan_reference
from ..reference.build import ReferenceInputs, build_reference
from ..reference.precompute import PrecomputeSetup
from ..run_folder import RunFolder
from ..strategy import StrategyOptions, build_strategy, strategy_options
from ..strategy.launch import launched_world_size
from ..validate import validate
from .checkpoint import latest_checkpoint, saved_reference_state
from .loaders import Items, load_splits, make_eval_loader, make_train_loader
from .optim import build_optimizer, build_scheduler, planned_steps
from .trainer import DPOTrainer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_output_dir(path: str) -> Path:
    """Refuse an output folder that cannot be created or written, before anything expensive happens."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output_dir: cannot create {out}: {exc.strerror}") from None
    # A real write, not os.access: permission bits say nothing for root or on a read-only mount.
    probe = out / f".preftune-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"output_dir: {out} is not writable: {exc.strerror}") from None
    return out


def resume_point(cfg: Config) -> Path | None:
    """The checkpoint ``ckpt.resume`` names: the newest complete one (auto), none, or an explicit folder."""
    if cfg.ckpt.resume == "none":
        return None
    if cfg.ckpt.resume == "auto":
        return latest_checkpoint(RunFolder(Path(cfg.output_dir)).checkpoints)
    path = Path(cfg.ckpt.resume)
    if not path.is_dir():
        raise ConfigError(f"ckpt.resume: {path} is not a checkpoint folder")
    return path


def _quiet(*_: Any) -> None:
    pass


def build_trainer(cfg: Config, need_train: bool = True, log: Any = print) -> tuple[DPOTrainer, int]:
    """Everything ``preftune train`` builds, in order; returns the trainer and its steps per epoch."""
    world_size = launched_world_size()
    validate(cfg, world_size, training=need_train)
    if not need_train:
        # Evaluation makes no optimizer step: one micro-batch per process is all a strategy is set up for.
        cfg = copy.deepcopy(cfg)
        cfg.train.batch_size = cfg.train.micro_batch_size * world_size
    if not cfg.model.name_or_path:
        raise ConfigError("model.name_or_path: no policy model given")
    out = check_output_dir(cfg.output_dir)
    seed_everything(cfg.seed)
    plan = plan_reference(cfg)
    options = strategy_options(cfg, world_size, plan.offload)
    accumulation = cfg.train.batch_size // (cfg.train.micro_batch_size * world_size)
    strategy = build_strategy(cfg.strategy.name, accumulation, options)
    if not strategy.is_main():
        log = _quiet
    if cfg.data.groups:
        log("note: data.groups is ignored: pairs and rows of K scored responses train together without it")
    tokenizer = loading.load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    train_rows, eval_rows = load_splits(cfg, tokenizer, out, need_train, log, strategy)

    policy, layout = _policy_and_layout(cfg, tokenizer.pad_token_id, log)

    def load(path: str, key: str) -> nn.Module:
        return loading.load_model(path, cfg.model, key)

    inputs = ReferenceInputs(policy, load, strategy, cfg.train.lm_head_chunk, log)
    precompute = _precompute_setup(cfg, plan, options, layout, train_rows, eval_rows, need_train)
    reference = build_reference(plan, inputs, precompute)

    steps_per_epoch = len(train_rows) // cfg.train.batch_size
    optimizer = build_optimizer(policy, cfg.optim) if need_train else None
    total = planned_steps(steps_per_epoch, cfg.train.max_epochs, cfg.train.max_steps)
    scheduler = build_scheduler(optimizer, cfg.optim, max(total, 1)) if optimizer is not None else None
    train_loader = make_train_loader(train_rows, layout, cfg, strategy, log) if need_train else None
    trainer = DPOTrainer(
        policy, None, strategy, tokenizer, optimizer, train_loader, make_eval_loader(eval_rows, layout, cfg, strategy),
        scheduler, max_norm=cfg.optim.max_norm, beta=cfg.loss.beta, max_epochs=cfg.train.max_epochs,
        save_hf_ckpt=cfg.ckpt.save_hf, disable_ds_ckpt=cfg.ckpt.disable,
        loss_config=cfg.loss, layout=layout, lm_head_chunk=cfg.train.lm_head_chunk, reference=reference,
        ref_sync_steps=cfg.ref.sync_steps, ref_sync_alpha=cfg.ref.sync_alpha,
    )  # fmt: skip
    return trainer, steps_per_epoch


def _policy_and_layout(cfg: Config, pad_token_id: int, log: Any) -> tuple[nn.Module, Layout]:
    """The policy as it trains (activation checkpointing, LoRA adapters) and the layout chosen for it."""
    model = loading.load_model(cfg.model.name_or_path, cfg.model)
    if cfg.model.gradient_checkpointing:
        loading.enable_activation_checkpointing(model)
    layout = build_layout(
        cfg.train.layout, pad_token_id, model, aux_loss=cfg.loss.aux_loss_coef > 0, ld_alpha=cfg.loss.ld_alpha
    )
    if cfg.train.layout == "auto":
        log(f"layout: {layout.name} (train.layout auto)")
    return (wrap_lora(model, cfg.lora) if cfg.lora.rank > 0 else model), layout


def _precompute_setup(
    cfg: Config,
    plan: ReferencePlan,
    options: StrategyOptions,
    layout: Layout,
    train_rows: Items,
    eval_rows: Items,
    need_train: bool,
) -> PrecomputeSetup | None:
    if not plan.precompute:
        return None
    splits = {name: rows for name, rows in (("train", train_rows), ("eval", eval_rows)) if rows}
    folder = resume_point(cfg) if need_train else None
    return PrecomputeSetup(
        splits,
        layout,
        options.compute_precision,
        cfg.train.eval_micro_batch_size or cfg.train.micro_batch_size,
        (folder, saved_reference_state(folder)) if folder is not None else None,
        cfg.log.progress,
    )
