"""DPOTrainer: OpenRLHF's interface, one readable loop, no distributed code (the strategy does that)."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import export_hf, load_checkpoint, save_checkpoint
from .config import Config, LossConfig
from .errors import NonFiniteError, StopRequested
from .forward import Batch, Layout, PaddedLayout, PairForward, SequenceScorer
from .lora import is_peft_model
from .losses import LossOutput, LossState, PairLogps, compute_loss, get_loss
from .metrics import JsonlSink, PairStats, ProgressBar, Sink, Sinks, TensorBoardSink, WandbSink
from .reference import AdapterDisabledReference, ModelReference, ReferenceSource, freeze
from .strategy import Strategy


class DPOTrainer:
    """Direct Preference Optimization of ``model`` against a frozen reference.

    ``model`` is a Hugging Face causal LM trained in place; ``ref_model`` the frozen reference (None for a
    reference-free loss, for a peft LoRA ``model``, whose reference is itself with adapters disabled, or when
    ``reference`` supplies log-probs another way). ``beta`` overrides
    ``loss_config.beta``. Dataloaders yield :class:`~preftune.forward.Batch` objects made by ``layout.collate``.
    """

    def __init__(
        self,
        model: nn.Module,
        ref_model: nn.Module | None,
        strategy: Strategy,
        tokenizer: Any,
        optim: torch.optim.Optimizer | None,
        train_dataloader: Any,
        eval_dataloader: Any,
        scheduler: Any,
        max_norm: float = 0.5,
        beta: float = 0.01,
        max_epochs: int = 2,
        save_hf_ckpt: bool = False,
        disable_ds_ckpt: bool = False,
        *,
        loss_config: LossConfig | None = None,
        layout: Layout | None = None,
        reference: ReferenceSource | None = None,
        lm_head_chunk: int = 1024,
    ) -> None:
        self.strategy = strategy
        self.tokenizer = tokenizer
        self.optimizer = optim
        self.train_dataloader = train_dataloader
        self.eval_dataloader = eval_dataloader
        self.scheduler = scheduler
        self.max_norm = max_norm
        self.max_epochs = max_epochs
        self.save_hf_ckpt = save_hf_ckpt
        self.disable_ds_ckpt = disable_ds_ckpt
        self.loss_config = dataclasses.replace(loss_config or LossConfig(), beta=beta)
        self.loss_spec = get_loss(self.loss_config.type)
        self.loss_state = LossState()
        self.layout = layout or PaddedLayout(tokenizer.pad_token_id)

        self.model = model
        if optim is not None:
            strategy.attach_optimizer(optim)
        self.scorer = strategy.prepare_model(SequenceScorer(model, lm_head_chunk), trainable=True)
        if ref_model is not None and reference is not None:
            raise ValueError("give either ref_model or reference, not both")
        if ref_model is not None:
            if self.loss_spec.reference_free:
                raise ValueError(f"loss {self.loss_spec.name!r} is reference-free; pass ref_model=None")
            ref_scorer = strategy.prepare_model(
                freeze(SequenceScorer(ref_model, lm_head_chunk)), trainable=False
            )
            reference = ModelReference(ref_scorer, self.layout)
        if reference is None and not self.loss_spec.reference_free and is_peft_model(model):
            reference = AdapterDisabledReference(model, self.layout, lm_head_chunk)
        if reference is None and not self.loss_spec.reference_free:
            raise ValueError(
                f"loss {self.loss_spec.name!r} needs a reference model (ref_model) or a reference source"
            )
        self.reference = reference
        self.global_step = 0
        # Polled after every optimizer step (e.g. a SIGTERM handler); the runner installs one.
        self.should_stop: Callable[[], bool] = lambda: False

    # ------------------------------------------------------------------ one forward, shared by train and eval

    def _pair_losses(
        self, batch: Batch, training: bool
    ) -> tuple[Tensor, Tensor, LossOutput, PairForward, Tensor]:
        """(scalar objective, per-pair loss, loss output, policy forward, per-pair chosen NLL) of one micro-batch."""
        cfg = self.loss_config
        want_aux = cfg.aux_loss_coef > 0
        fwd = self.layout.pair_logps(self.scorer, batch, want_aux=want_aux)
        ref = self.reference.pair_logps(batch) if self.reference is not None else None
        logps = PairLogps(
            policy_chosen=fwd.chosen_logps,
            policy_rejected=fwd.rejected_logps,
            ref_chosen=ref.chosen_logps if ref is not None else None,
            ref_rejected=ref.rejected_logps if ref is not None else None,
            chosen_tokens=fwd.chosen_tokens,
            rejected_tokens=fwd.rejected_tokens,
        )
        self.loss_state.update = training
        out = compute_loss(logps, cfg, self.loss_state)
        # Per-token NLL of each chosen response, averaged per pair, so micro-batch means compose exactly.
        nll = -fwd.chosen_logps / fwd.chosen_tokens.clamp(min=1)
        per_pair = out.losses + cfg.nll_coef * nll if cfg.nll_coef > 0 else out.losses
        objective = per_pair.mean()
        if want_aux and fwd.aux_loss is not None:
            objective = objective + cfg.aux_loss_coef * fwd.aux_loss
        return objective, per_pair, out, fwd, nll

    def _reduced_means(self, stats: PairStats) -> dict[str, float]:
        means = stats.means(self.strategy.all_reduce(stats.sums))
        if self.loss_config.nll_coef == 0 and self.loss_spec.name != "orpo":
            means.pop("nll")
        return means

    # ------------------------------------------------------------------ training

    def fit(
        self, args: Config, consumed_samples: int = 0, num_update_steps_per_epoch: int | None = None
    ) -> None:
        """Train for ``max_epochs`` (or ``args.train.max_steps``), starting after ``consumed_samples`` pairs."""
        strategy, train = self.strategy, args.train
        if self.optimizer is None or self.train_dataloader is None:
            raise ValueError("fit() needs an optimizer and a train_dataloader")
        global_batch = train.batch_size
        steps_per_epoch = (
            num_update_steps_per_epoch or len(self.train_dataloader) // strategy.accumulation_steps
        )
        if steps_per_epoch < 1:
            raise ValueError(f"the training set is smaller than one batch of {global_batch} pairs")
        total_steps = steps_per_epoch * self.max_epochs
        if train.max_steps is not None:
            total_steps = min(total_steps, train.max_steps)
        output_dir = Path(args.output_dir)
        self.global_step = consumed_samples // global_batch
        sinks = self._build_sinks(args, output_dir, total_steps)
        if strategy.is_main():
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "config.yaml").write_text(args.to_yaml())

        if train.eval_at_start and self.global_step == 0 and (before := self.evaluate()):
            sinks.log(0, before)
        start_epoch = self.global_step // steps_per_epoch
        window, window_start, grad_norms = PairStats(), time.perf_counter(), []
        step_stats, step_rows, bad_in_row = PairStats(), [], 0
        done = self.global_step >= total_steps
        for epoch in range(start_epoch, self.max_epochs):
            if done:
                break
            skip = consumed_samples - epoch * steps_per_epoch * global_batch if epoch == start_epoch else 0
            _set_sampler_position(self.train_dataloader, epoch, skip)
            self.scorer.train()
            micro_step = 0
            for batch in self.train_dataloader:
                batch = batch.to(strategy.device)
                micro_step += 1
                boundary = micro_step % strategy.accumulation_steps == 0
                with strategy.accumulate(self.scorer, boundary):
                    objective, per_pair, out, fwd, nll = self._pair_losses(batch, training=True)
                    strategy.backward(objective, self.scorer, self.optimizer)
                step_stats.add(per_pair, out, fwd, nll, batch.num_tokens)
                step_rows += batch.rows
                if not boundary:
                    continue
                lr = self.optimizer.param_groups[0]["lr"]
                # A non-finite norm means the strategy dropped the gradients: no update this step.
                grad_norm = strategy.optimizer_step(
                    self.optimizer, self.scorer, self.scheduler, self.max_norm
                )
                self.global_step += 1
                consumed_samples += global_batch
                if math.isfinite(grad_norm):
                    window.merge(step_stats)
                    grad_norms.append(grad_norm)
                    bad_in_row = 0
                else:
                    window.sums["skipped_steps"] += 1
                    bad_in_row += 1
                    if bad_in_row >= train.max_nonfinite_steps:
                        sinks.close()
                        raise NonFiniteError(
                            f"step {self.global_step}: non-finite loss or gradients in {bad_in_row} steps in a row "
                            f"(train.max_nonfinite_steps); rows of the last batch: {_format_rows(step_rows)}; "
                            f"the last good checkpoint is kept in {output_dir / 'checkpoints'}"
                        )
                step_stats, step_rows = PairStats(), []
                if self.global_step % train.logging_steps == 0:
                    elapsed = time.perf_counter() - window_start
                    metrics = self._reduced_means(window)
                    metrics.update(
                        lr=lr,
                        grad_norm=sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
                        tokens_per_s=metrics["tokens"] / max(elapsed, 1e-9),
                        epoch=self.global_step / steps_per_epoch,
                        consumed_samples=consumed_samples,
                    )
                    sinks.log(self.global_step, metrics)
                    window, window_start, grad_norms = PairStats(), time.perf_counter(), []
                epoch_end = self.global_step % steps_per_epoch == 0
                done = self.global_step >= total_steps
                if (train.eval_steps and self.global_step % train.eval_steps == 0) or epoch_end or done:
                    if eval_metrics := self.evaluate():
                        sinks.log(self.global_step, eval_metrics)
                    self.scorer.train()
                save_steps = args.ckpt.save_steps
                stopping = self._stop_requested()
                saved = None
                if (save_steps and (self.global_step % save_steps == 0 or done)) or stopping:
                    saved = self.save_checkpoint(args, consumed_samples)
                if stopping:
                    sinks.close()
                    where = (
                        f"checkpoint written to {saved}; rerun the same command to resume"
                        if saved is not None
                        else "no checkpoint written (ckpt.disable is set)"
                    )
                    raise StopRequested(f"stopped by a signal after step {self.global_step}; {where}")
                if done:
                    break
        sinks.close()
        self._export(output_dir / "final", args, args.to_yaml())

    def _stop_requested(self) -> bool:
        """True on every process once any process got a stop signal, so all of them stop at the same step."""
        flag = 1.0 if self.should_stop() else 0.0
        return self.strategy.all_reduce({"stop": flag}, op="max")["stop"] > 0

    def evaluate(self) -> dict[str, float]:
        """Exact pair-weighted means over the whole eval set, keyed ``eval/...``; empty without eval data."""
        if self.eval_dataloader is None:
            return {}
        self.scorer.eval()
        stats = PairStats()
        # Shards differ by at most one pair, so batch counts may too; a sharded model (FSDP2, ZeRO-3) needs every
        # process in every forward, so a short shard repeats its last batch and discards the result.
        most = int(
            self.strategy.all_reduce({"batches": float(len(self.eval_dataloader))}, op="max")["batches"]
        )
        batch = None
        with torch.no_grad():
            for batch in self.eval_dataloader:
                batch = batch.to(self.strategy.device)
                _, per_pair, out, fwd, nll = self._pair_losses(batch, training=False)
                stats.add(per_pair, out, fwd, nll, batch.num_tokens)
            for _ in range(most - len(self.eval_dataloader)):
                if batch is not None:
                    self._pair_losses(batch, training=False)
        means = self._reduced_means(stats)
        means.pop("skipped_steps")
        return {f"eval/{key}": value for key, value in means.items()}

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, args: Config, consumed_samples: int) -> Path | None:
        if self.disable_ds_ckpt:
            return None
        assert self.optimizer is not None, "checkpoints are written while training"
        root = Path(args.output_dir) / "checkpoints"
        state = {
            "global_step": self.global_step,
            "consumed_samples": consumed_samples,
            "reference": self.reference.state_for_checkpoint() if self.reference is not None else {},
            "config": args.to_dict(),  # the resolved config this checkpoint was trained with
        }
        export = None
        if self.save_hf_ckpt:

            def export(folder: Path) -> None:
                self._export(folder, args, None)

        return save_checkpoint(
            root, self.global_step, self.strategy, self.scorer, self.optimizer, self.scheduler, state,
            keep=args.ckpt.keep, export=export, extra={"loss_state": self.loss_state.state_dict()},
        )  # fmt: skip

    def _export(self, folder: Path, args: Config, config_yaml: str | None) -> None:
        export_hf(
            folder, self.strategy, self.scorer, self.model, self.tokenizer, config_yaml, args.lora.export
        )

    def load_checkpoint(self, folder: Path) -> int:
        """Restore weights, optimizer, scheduler, RNG and loss state; returns the consumed samples to resume at."""
        state = load_checkpoint(folder, self.strategy, self.scorer, self.optimizer, self.scheduler)
        self.loss_state.load_state_dict(state["extra"].get("loss_state", {}))
        self.global_step = state["global_step"]
        return int(state["consumed_samples"])

    def _build_sinks(self, args: Config, output_dir: Path, total_steps: int) -> Sinks:
        if not self.strategy.is_main():
            return Sinks()
        output_dir.mkdir(parents=True, exist_ok=True)
        resume_step = self.global_step if self.global_step > 0 else None
        sinks: list[Sink] = [JsonlSink(output_dir / "metrics.jsonl", resume_step)]
        if args.log.progress:
            sinks.append(ProgressBar(total_steps, self.global_step))
        if args.log.tensorboard:
            sinks.append(TensorBoardSink(output_dir / "tensorboard"))
        if args.log.wandb:
            sinks.append(WandbSink(args.log.wandb_project, args.log.wandb_mode, output_dir, args.to_dict()))
        return Sinks(sinks)


def _format_rows(rows: list[tuple[str, int]], limit: int = 8) -> str:
    shown = ", ".join(f"{source} row {index}" for source, index in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _set_sampler_position(dataloader: Any, epoch: int, skip: int) -> None:
    """Point a resumable sampler at ``epoch`` after ``skip`` consumed samples; plain samplers can't resume."""
    sampler = getattr(dataloader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        try:
            sampler.set_epoch(epoch, skip)  # type: ignore[union-attr]
        except TypeError:
            if skip:
                raise ValueError("resuming mid-epoch needs preftune's ResumableSampler") from None
            sampler.set_epoch(epoch)  # type: ignore[union-attr]
    elif skip:
        raise ValueError("resuming mid-epoch needs preftune's ResumableSampler")
