"""Config in, trained model out: builds tokenizer, data, models, optimizer and trainer, the way the CLI does."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .checkpoint import latest_checkpoint
from .config import REFERENCE_FREE_LOSSES, Config, ConfigError, validate
from .data import TokenizedPair, load_pairs, write_data_report
from .forward import Layout
from .lora import wrap_lora
from .optim import build_optimizer, build_scheduler
from .packing import build_layout
from .ref_precompute import compute_precision, number_pairs, precomputed_reference
from .sampler import ResumableSampler
from .signals import GracefulStop
from .strategy import Strategy, build_strategy
from .trainer import DPOTrainer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


@contextlib.contextmanager
def _loading(key: str, name_or_path: str) -> Iterator[None]:
    """Turn a load failure (missing folder, no network for a Hub name) into a one-line error naming the key."""
    try:
        yield
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{key}: cannot load {name_or_path!r}: {first}") from None


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    with _loading("model.name_or_path", name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        # Padding is masked out everywhere, so any id serves; EOS is the common convention.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, cfg: Config, key: str = "model.name_or_path") -> PreTrainedModel:
    m = cfg.model
    with _loading(key, name_or_path):
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            dtype=_DTYPES[m.dtype],
            attn_implementation=m.attn_implementation,
            trust_remote_code=m.trust_remote_code,
        )
    model.config.use_cache = False
    return model


def make_train_loader(
    pairs: list[TokenizedPair], layout: Layout, cfg: Config, strategy: Strategy
) -> DataLoader:
    # A padded row is as wide as its prompt plus its longer response.
    lengths = (
        [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
        if cfg.data.group_by_length
        else None
    )
    sampler = ResumableSampler(
        len(pairs),
        cfg.train.batch_size,
        cfg.seed,
        cfg.data.shuffle,
        strategy.rank,
        strategy.world_size,
        lengths,
    )
    dataset: Any = pairs  # a list is a valid map-style dataset; torch's stubs only admit Dataset
    return DataLoader(
        dataset,
        batch_size=cfg.train.micro_batch_size,
        sampler=sampler,
        collate_fn=layout.collate,
        generator=_private_generator(),
    )


def _private_generator() -> torch.Generator:
    """A generator of the loader's own: each new iterator draws a seed from it, and drawing from the global
    RNG instead would shift dropout masks whenever iterators are made at other points (a resumed run makes
    one mid-epoch), so a resumed run with dropout would no longer equal the uninterrupted one."""
    return torch.Generator().manual_seed(0)


def make_eval_loader(
    pairs: list[TokenizedPair], layout: Layout, cfg: Config, strategy: Strategy
) -> DataLoader | None:
    if not pairs:
        return None
    size = cfg.train.eval_micro_batch_size or cfg.train.micro_batch_size
    # Disjoint shards with no padding or repeats: metric sums over processes then cover each pair once.
    dataset: Any = pairs[strategy.rank :: strategy.world_size]
    return DataLoader(
        dataset, batch_size=size, shuffle=False, collate_fn=layout.collate, generator=_private_generator()
    )


def _load_data(
    cfg: Config, tokenizer: Any, out: Path, need_train: bool, log: Any, is_main: bool
) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    reports = {}
    train_pairs: list[TokenizedPair] = []
    if need_train:
        if not cfg.data.train:
            raise ConfigError("data.train: no training source given")
        train_pairs, reports["train"] = load_pairs(cfg.data, tokenizer, "train", cfg.seed)
    eval_pairs: list[TokenizedPair] = []
    if cfg.data.eval:
        eval_pairs, reports["eval"] = load_pairs(cfg.data, tokenizer, "eval", cfg.seed)
    if not is_main:
        return train_pairs, eval_pairs
    path = write_data_report(reports, out)
    for split, report in reports.items():
        drops = ", ".join(f"{n} {reason}" for reason, n in sorted(report.dropped.items())) or "none"
        log(f"data {split}: {report.rows_read} rows, {report.kept} kept, dropped: {drops} (details: {path})")
    return train_pairs, eval_pairs


def _reference(cfg: Config) -> PreTrainedModel | None:
    # With LoRA the trainer scores the reference on the policy itself, adapters disabled: nothing to load.
    if cfg.loss.type in REFERENCE_FREE_LOSSES or cfg.lora.rank > 0:
        return None
    if cfg.ref.name_or_path:
        return load_model(cfg.ref.name_or_path, cfg, key="ref.name_or_path")
    return load_model(cfg.model.name_or_path, cfg)


def _quiet(*_: Any) -> None:
    pass


def build_trainer(cfg: Config, need_train: bool = True, log: Any = print) -> tuple[DPOTrainer, int]:
    """Everything ``preftune train`` builds, in order; returns the trainer and its steps per epoch."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    validate(cfg, world_size)
    if not cfg.model.name_or_path:
        raise ConfigError("model.name_or_path: no policy model given")
    out = check_output_dir(cfg.output_dir)
    seed_everything(cfg.seed)
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
    options: dict[str, Any] = {} if name == "single" else {"ref_offload": cfg.ref.offload}
    if name == "fsdp2":
        options.update(mixed_precision=cfg.strategy.mixed_precision, cpu_offload=cfg.strategy.cpu_offload)
    if name == "deepspeed":
        from .strategy.deepspeed_strategy import build_ds_config

        options["ds_config"] = build_ds_config(cfg, world_size)
    strategy = build_strategy(
        name, accumulation_steps=cfg.train.batch_size // (cfg.train.micro_batch_size * world_size), **options
    )
    if not strategy.is_main():
        log = _quiet
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    train_pairs, eval_pairs = _load_data(cfg, tokenizer, out, need_train, log, strategy.is_main())
    if 0 < len(eval_pairs) < strategy.world_size:
        raise ConfigError(
            f"data.eval: {len(eval_pairs)} usable evaluation pairs for {strategy.world_size} processes; "
            "each process needs at least one"
        )
    if need_train and len(train_pairs) < cfg.train.batch_size:
        raise ConfigError(
            f"train.batch_size: {len(train_pairs)} usable training pairs are fewer than one batch of "
            f"{cfg.train.batch_size} (see {out / 'data_report.json'})"
        )
    number_pairs(train_pairs, eval_pairs)
    left_out = len(train_pairs) % cfg.train.batch_size
    if need_train and left_out:
        log(
            f"data train: {left_out} pairs per epoch do not fill a last batch of {cfg.train.batch_size} and are "
            "left out of that epoch (a different few each epoch when data.shuffle is on)"
        )

    model = load_model(cfg.model.name_or_path, cfg)
    if cfg.model.gradient_checkpointing:
        # The non-reentrant variant works with frozen inputs and DDP; transformers 5 renamed the method.
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    layout = build_layout(
        cfg.train.layout, tokenizer.pad_token_id, model, aux_loss=cfg.loss.aux_loss_coef > 0
    )
    if cfg.train.layout == "auto":
        log(f"layout: {layout.name} (train.layout auto)")
    ref_model, reference = None, None
    if cfg.ref.precompute:
        # Before LoRA wraps the policy: its adapter-free weights are then the reference's.
        splits = {name: pairs for name, pairs in (("train", train_pairs), ("eval", eval_pairs)) if pairs}
        reference = precomputed_reference(
            cfg, model, lambda: _reference(cfg), layout, strategy, splits,
            compute_precision(options), resume_point(cfg) if need_train else None, log,
        )  # fmt: skip
    else:
        ref_model = _reference(cfg)
    policy = wrap_lora(model, cfg.lora) if cfg.lora.rank > 0 else model
    train_loader = make_train_loader(train_pairs, layout, cfg, strategy) if need_train else None
    steps_per_epoch = len(train_pairs) // cfg.train.batch_size
    total = steps_per_epoch * cfg.train.max_epochs
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    optimizer = build_optimizer(policy, cfg.optim) if need_train else None
    scheduler = build_scheduler(optimizer, cfg.optim, max(total, 1)) if optimizer is not None else None
    trainer = DPOTrainer(
        policy, ref_model, strategy, tokenizer, optimizer, train_loader, make_eval_loader(eval_pairs, layout, cfg, strategy),
        scheduler, max_norm=cfg.optim.max_norm, beta=cfg.loss.beta, max_epochs=cfg.train.max_epochs,
        save_hf_ckpt=cfg.ckpt.save_hf, disable_ds_ckpt=cfg.ckpt.disable,
        loss_config=cfg.loss, layout=layout, lm_head_chunk=cfg.train.lm_head_chunk, reference=reference,
    )  # fmt: skip
    return trainer, steps_per_epoch


def resume_point(cfg: Config) -> Path | None:
    """The checkpoint ``ckpt.resume`` names: the newest complete one (auto), none, or an explicit folder."""
    if cfg.ckpt.resume == "none":
        return None
    if cfg.ckpt.resume == "auto":
        return latest_checkpoint(Path(cfg.output_dir) / "checkpoints")
    path = Path(cfg.ckpt.resume)
    if not path.is_dir():
        raise ConfigError(f"ckpt.resume: {path} is not a checkpoint folder")
    return path


def train(cfg: Config, log: Any = print) -> Path:
    """Run ``preftune train``; returns the folder of the exported Hugging Face model."""
    # Handlers go in first: under torchrun a signal may arrive while a process is still building, and the
    # default action would kill it and strand its peers; now it means "stop after the first step" instead.
    with GracefulStop() as stop:
        trainer, steps_per_epoch = build_trainer(cfg, need_train=True, log=log)
        consumed = 0
        ckpt = resume_point(cfg)
        if ckpt is not None:
            consumed = trainer.load_checkpoint(ckpt)
            trainer.strategy.print(
                f"resuming from {ckpt} at step {trainer.global_step} ({consumed} pairs consumed)"
            )
        trainer.should_stop = stop
        trainer.fit(cfg, consumed_samples=consumed, num_update_steps_per_epoch=steps_per_epoch)
    trainer.strategy.close()
    return Path(cfg.output_dir) / "final"


def evaluate(cfg: Config, log: Any = print) -> dict[str, float]:
    """Run ``preftune eval``: DPO loss, reward accuracy and margins of the model against the reference."""
    if not cfg.data.eval:
        raise ConfigError("data.eval: no evaluation source given")
    trainer, _ = build_trainer(cfg, need_train=False, log=log)
    metrics = trainer.evaluate()
    trainer.strategy.close()
    return metrics
