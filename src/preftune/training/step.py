"""The pieces of one optimizer step the trainer hands out: a micro-batch's losses, a step's result, how a
dataloader's micro-batches are grouped into steps, and how much each micro-batch weighs in its step."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..layouts import Batch
from ..run_folder import RunFolder
from .metrics import RowStats


@dataclass
class StepResult:
    """What one optimizer step did, as :meth:`DPOTrainer.train_step` returns it."""

    step: int  # the global step this update made
    stats: RowStats  # sums over this process's rows of the step
    grad_norm: float  # before clipping; non-finite means the update was skipped
    lr: float  # the learning rate the update used
    rows: list[tuple[str, int]]  # (source, index) of the step's pairs on this process

    @property
    def skipped(self) -> bool:
        return not math.isfinite(self.grad_norm)


@dataclass(frozen=True)
class LoopSettings:
    """What :meth:`DPOTrainer.fit` reads, decided once: the run's config for the folder, the step arithmetic and
    when to log, evaluate and save; ``max_epochs`` from the trainer (OpenRLHF passes it to the constructor)."""

    run: RunFolder
    global_batch: int  # rows per optimizer step over all processes (train.batch_size)
    max_epochs: int
    max_steps: int | None
    logging_steps: int
    eval_steps: int | None  # besides each epoch's end and the last step
    eval_at_start: bool
    save_steps: int | None  # besides the last step
    max_nonfinite_steps: int

    @classmethod
    def of(cls, args: Config, max_epochs: int) -> LoopSettings:
        t = args.train
        return cls(
            RunFolder(Path(args.output_dir)), t.batch_size, max_epochs, t.max_steps, t.logging_steps,
            t.eval_steps, t.eval_at_start, args.ckpt.save_steps, t.max_nonfinite_steps,
        )  # fmt: skip

    def evaluates_after(self, step: int, steps_per_epoch: int, done: bool) -> bool:
        return bool(self.eval_steps and step % self.eval_steps == 0) or step % steps_per_epoch == 0 or done

    def saves_after(self, step: int, done: bool) -> bool:
        return bool(self.save_steps and (step % self.save_steps == 0 or done))


class StepLoader:
    """A train loader that makes whole optimizer steps: each item is one step's micro-batches on this process.

    ``sampler`` is the resumable sampler under it (:func:`~preftune.data.sampler.set_sampler_position` moves it);
    ``len`` is the number of steps left in the epoch.
    """

    sampler: Any

    def __iter__(self) -> Iterator[list[Batch]]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class CountSteps(StepLoader):
    """A loader of micro-batches (OpenRLHF's kind: one Batch per item), ``accumulation`` of them per step."""

    def __init__(self, loader: Any, accumulation: int) -> None:
        self.loader, self.accumulation = loader, accumulation
        self.sampler = getattr(loader, "sampler", None)

    def __iter__(self) -> Iterator[list[Batch]]:
        return step_groups(self.loader, self.accumulation)

    def __len__(self) -> int:
        return len(self.loader) // self.accumulation


def steps_of(loader: Any, accumulation: int) -> StepLoader:
    """The steps a train loader makes: its own (a token budget splits each step's rows itself, see
    :mod:`.budget`), or its micro-batches ``accumulation`` at a time."""
    return loader if isinstance(loader, StepLoader) else CountSteps(loader, accumulation)


def step_groups(batches: Iterable[Batch], size: int) -> Iterator[list[Batch]]:
    """Consecutive micro-batches, ``size`` at a time: one optimizer step each (a short tail is left out)."""
    group: list[Batch] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


def row_shares(micro_batches: Sequence[Batch]) -> list[float]:
    """The weight of each micro-batch's objective in its step: its share of the step's rows on this process.

    Each objective is a mean over its micro-batch's rows (pairs and rows of K responses), so these weights make the
    step's gradient the mean over all of the step's rows however they were split: micro-batches of 3, 1 and 4
    rows weigh 3/8, 1/8 and 4/8. Equal micro-batches (a split by count) weigh 1/n each, exactly as dividing by
    the accumulation steps did. Every process holds as many of the step's rows (the sampler's shards are
    equal), so the strategies' mean over processes keeps it the mean over the whole step.
    """
    total = sum(batch.num_rows for batch in micro_batches)
    return [batch.num_rows / total for batch in micro_batches]


def nonfinite_message(result: StepResult, in_row: int, output_dir: Path, limit: int = 8) -> str:
    shown = ", ".join(f"{source} row {index}" for source, index in result.rows[:limit])
    more = f" and {len(result.rows) - limit} more" if len(result.rows) > limit else ""
    return (
        f"step {result.step}: non-finite loss or gradients in {in_row} steps in a row "
        f"(train.max_nonfinite_steps); rows of the last batch: {shown}{more}; "
        f"the last good checkpoint is kept in {RunFolder(output_dir).checkpoints}"
    )
