"""DPOTrainer: OpenRLHF's interface, one readable loop over a callable step, no distributed code (the strategy
does that)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Config, LossConfig
from ..data.sampler import set_sampler_position
from ..errors import NonFiniteError, StopRequested
from ..layouts import Batch, Layout, PaddedLayout
from ..losses import LossState, get_loss, trainer_loss_config
from ..model.scorer import SequenceScorer
from ..reference.build import trainer_reference
from ..reference.sources import ReferenceSource
from ..reference.sync import reference_sync
from ..run_folder import RunFolder
from ..strategy import Strategy, lockstep
from .checkpoint import export_hf, load_checkpoint, save_checkpoint
from .metrics import RowStats, Sinks, StepWindow, build_sinks
from .objective import MicroBatchLosses, row_losses
from .optim import planned_steps
from .step import LoopSettings, StepResult, nonfinite_message, row_shares, steps_of


class DPOTrainer:
    """Direct Preference Optimization of ``model`` against a frozen reference.

    ``model`` is a Hugging Face causal LM trained in place; ``ref_model`` the frozen reference, or None when
    ``reference`` supplies log-probs another way, for a reference-free loss, or for a peft LoRA ``model`` (its
    reference is itself with adapters disabled). ``beta`` and ``loss_config.beta`` must agree when both are
    given. Dataloaders yield :class:`~preftune.layouts.Batch` objects made by ``layout.collate``, the train one
    ``strategy.accumulation_steps`` per step; or the train one is a :class:`~.step.StepLoader` that yields each
    step's micro-batches itself (a token budget, :class:`~.budget.TokenBudgetSteps`).

    ``ref_sync_steps`` > 0: TR-DPO, the reference becomes ``ref_sync_alpha`` x policy + (1 - ``ref_sync_alpha``) x
    reference after every ``ref_sync_steps``-th optimizer step (see :mod:`preftune.reference.sync`).

    Hooks: ``on_gradients`` callables get the trainer once a step's gradients are accumulated, before clipping
    and the update; ``on_step_end`` callables get the trainer and the :class:`StepResult` after it.
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
        beta: float | None = None,
        max_epochs: int = 2,
        save_hf_ckpt: bool = False,
        disable_ds_ckpt: bool = False,
        *,
        loss_config: LossConfig | None = None,
        layout: Layout | None = None,
        reference: ReferenceSource | None = None,
        lm_head_chunk: int = 1024,
        ref_sync_steps: int = 0,
        ref_sync_alpha: float = 0.6,
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
        self.loss_config = trainer_loss_config(beta, loss_config)
        self.loss_spec = get_loss(self.loss_config.type)
        self.loss_state = LossState()
        self.layout = layout or PaddedLayout(tokenizer.pad_token_id, self.loss_config.ld_alpha)
        self.model = model
        if optim is not None:
            strategy.attach_optimizer(optim)
        self.scorer = strategy.prepare_model(SequenceScorer(model, lm_head_chunk), trainable=True)
        self.reference = trainer_reference(
            self.loss_spec, model, ref_model, reference, strategy, lm_head_chunk
        )
        self.global_step = 0
        # Polled after every optimizer step (e.g. a SIGTERM handler); the runner installs one.
        self.should_stop: Callable[[], bool] = lambda: False
        self.on_gradients: list[Callable[[DPOTrainer], None]] = []
        # TR-DPO: the reference follows the policy every ref_sync_steps steps (first of the step-end hooks).
        self.reference_sync = reference_sync(
            self.reference, self.scorer, strategy, ref_sync_steps, ref_sync_alpha
        )
        self.on_step_end: list[Callable[[DPOTrainer, StepResult], None]] = (
            [self.reference_sync] if self.reference_sync else []
        )

    # ------------------------------------------------------------------ one micro-batch, shared by train and eval

    def micro_batch_losses(self, batch: Batch, training: bool) -> MicroBatchLosses:
        """The policy (and reference) forward of one micro-batch and its losses; ``training`` lets a stateful
        loss update its statistics."""
        self.loss_state.update = training
        return row_losses(self.scorer, self.reference, batch, self.loss_config, self.loss_state)

    def _reduced_means(self, stats: RowStats) -> dict[str, float]:
        means = stats.means(self.strategy.all_reduce(stats.sums))
        if self.loss_config.nll_coef == 0 and not self.loss_spec.reports_nll:
            means.pop("nll", None)
        if not self.loss_config.wpo:
            means.pop("wpo/weight", None)
        return means

    # ------------------------------------------------------------------ training

    def train_step(self, micro_batches: Sequence[Batch]) -> StepResult:
        """One optimizer step: forward and backward of each micro-batch (as many as the step's loader split its
        rows into), each weighted by its share of the step's rows (:func:`row_shares`) so the gradient is the
        mean over all of them, gradients synchronised on the last; then clip, update and advance the schedule.
        Under ddp / fsdp2 / deepspeed every process passes as many micro-batches (their collectives pair up)."""
        strategy = self.strategy
        if self.optimizer is None:
            raise ValueError("train_step() needs an optimizer")
        if not micro_batches:
            raise ValueError("a step takes at least one micro-batch")
        stats, rows, last = RowStats(), [], len(micro_batches) - 1
        for i, (batch, share) in enumerate(zip(micro_batches, row_shares(micro_batches), strict=True)):
            batch = batch.to(strategy.device)
            with strategy.accumulate(self.scorer, i == last):
                losses = self.micro_batch_losses(batch, training=True)
                strategy.backward(losses.objective * share, self.scorer, self.optimizer)
            stats.add(losses, batch.num_tokens)
            rows += batch.rows
        for hook in self.on_gradients:
            hook(self)
        lr = self.optimizer.param_groups[0]["lr"]
        # A non-finite norm means the strategy dropped the gradients: no update this step.
        grad_norm = strategy.optimizer_step(self.optimizer, self.scorer, self.scheduler, self.max_norm)
        self.global_step += 1
        result = StepResult(self.global_step, stats, grad_norm, lr, rows)
        for end_hook in self.on_step_end:
            end_hook(self, result)
        return result

    def fit(
        self, args: Config, consumed_samples: int = 0, num_update_steps_per_epoch: int | None = None
    ) -> None:
        """Train for ``max_epochs`` (or ``args.train.max_steps``), starting after ``consumed_samples`` rows."""
        if self.optimizer is None or self.train_dataloader is None:
            raise ValueError("fit() needs an optimizer and a train_dataloader")
        loop = LoopSettings.of(args, self.max_epochs)
        steps = steps_of(self.train_dataloader, self.strategy.accumulation_steps)
        steps_per_epoch = num_update_steps_per_epoch or len(steps)
        if steps_per_epoch < 1:
            raise ValueError(f"the training set is smaller than one batch of {loop.global_batch} rows")
        total_steps = planned_steps(steps_per_epoch, loop.max_epochs, loop.max_steps)
        self.global_step = consumed_samples // loop.global_batch
        sinks = build_sinks(args, loop.run.root, total_steps, self.global_step, self.strategy.is_main())
        if self.strategy.is_main():
            loop.run.config.write_text(args.to_yaml())
        if loop.eval_at_start and self.global_step == 0 and (before := self.evaluate()):
            sinks.log(0, before)
        start_epoch = self.global_step // steps_per_epoch
        window, nonfinite_in_row = StepWindow(RowStats()), 0
        for epoch in range(start_epoch, loop.max_epochs):
            if self.global_step >= total_steps:
                break
            skip = (
                consumed_samples - epoch * steps_per_epoch * loop.global_batch if epoch == start_epoch else 0
            )
            set_sampler_position(steps, epoch, skip)
            self.scorer.train()
            for micro_batches in steps:
                result = self.train_step(micro_batches)
                consumed_samples += loop.global_batch
                window.add(result.stats, result.grad_norm)
                nonfinite_in_row = nonfinite_in_row + 1 if result.skipped else 0
                if nonfinite_in_row >= loop.max_nonfinite_steps:
                    sinks.close()
                    raise NonFiniteError(nonfinite_message(result, nonfinite_in_row, loop.run.root))
                if self.global_step % loop.logging_steps == 0:
                    sinks.log(
                        self.global_step,
                        self._window_metrics(window, result, steps_per_epoch, consumed_samples),
                    )
                    window = StepWindow(RowStats())
                done = self.global_step >= total_steps
                self._evaluate_and_save(args, loop, sinks, steps_per_epoch, done, consumed_samples)
                if done:
                    break
        sinks.close()
        self._export(loop.run.final, args, args.to_yaml())

    def _window_metrics(
        self, window: StepWindow, last: StepResult, steps_per_epoch: int, consumed_samples: int
    ) -> dict[str, float]:
        metrics = self._reduced_means(window.stats)
        metrics["lr"] = last.lr
        metrics.update(window.rates(metrics["tokens"]))
        metrics.update(epoch=self.global_step / steps_per_epoch, consumed_samples=consumed_samples)
        return metrics

    def _evaluate_and_save(
        self, args: Config, loop: LoopSettings, sinks: Sinks, steps_per_epoch: int, done: bool, consumed: int
    ) -> None:
        """After a step: evaluate and checkpoint when ``loop`` says; on a stop signal, checkpoint and raise
        :class:`StopRequested`."""
        step = self.global_step
        if loop.evaluates_after(step, steps_per_epoch, done):
            if eval_metrics := self.evaluate():
                sinks.log(step, eval_metrics)
            self.scorer.train()
        stopping = self._stop_requested()
        saved = self.save_checkpoint(args, consumed) if loop.saves_after(step, done) or stopping else None
        if stopping:
            sinks.close()
            where = f"checkpoint written to {saved}; rerun the same command to resume" if saved is not None else (
                "no checkpoint written (ckpt.disable is set)"
            )  # fmt: skip
            raise StopRequested(f"stopped by a signal after step {step}; {where}")

    def _stop_requested(self) -> bool:
        """True on every process once any process got a stop signal, so all of them stop at the same step."""
        flag = 1.0 if self.should_stop() else 0.0
        return self.strategy.all_reduce({"stop": flag}, op="max")["stop"] > 0

    def evaluate(self) -> dict[str, float]:
        """Exact pair-weighted means over the whole eval set, keyed ``eval/...``; empty without eval data."""
        if self.eval_dataloader is None:
            return {}
        self.scorer.eval()
        stats = RowStats()
        with torch.no_grad():
            for batch, real in lockstep(self.strategy, self.eval_dataloader):
                batch = batch.to(self.strategy.device)
                losses = self.micro_batch_losses(batch, training=False)
                if real:
                    stats.add(losses, batch.num_tokens)
        means = self._reduced_means(stats)
        means.pop("skipped_steps")
        return {f"eval/{key}": value for key, value in means.items()}

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, args: Config, consumed_samples: int) -> Path | None:
        if self.disable_ds_ckpt:
            return None
        assert self.optimizer is not None, "checkpoints are written while training"
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
            RunFolder(Path(args.output_dir)).checkpoints, self.global_step, self.strategy, self.scorer, self.optimizer,
            self.scheduler, state, keep=args.ckpt.keep, export=export, extra={"loss_state": self.loss_state.state_dict()},
            reference=functools.partial(self.reference_sync.save, step=self.global_step) if self.reference_sync else None,
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
        if self.reference_sync is not None:
            self.reference_sync.load(folder, self.global_step)
        return int(state["consumed_samples"])
