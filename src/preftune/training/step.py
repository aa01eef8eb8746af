"""The pieces of one optimizer step the trainer hands out: a micro-batch's losses, a step's result, and how the
dataloader's micro-batches are grouped into steps."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from torch import Tensor

from ..layouts import Batch, PairForward
from ..losses import GroupLogps, GroupLossOutput, LossOutput
from .metrics import PairStats


class MicroBatchLosses(NamedTuple):
    """A pair batch's, or (in brackets) a prompt-group batch's, losses and what they came from."""

    objective: Tensor  # scalar that backward runs on: mean per-pair (per-group) loss, plus the MoE aux term
    per_pair: Tensor  # (B,) loss, plus loss.nll_coef x nll  [(G,) loss]
    loss: LossOutput | GroupLossOutput  # the loss function's output: losses and rewards
    policy: (
        PairForward | GroupLogps
    )  # the policy's summed log-probs and token counts [with ref, scores, groups]
    nll: Tensor  # (B,) per-token NLL of each chosen response  [zeros]


@dataclass
class StepResult:
    """What one optimizer step did, as :meth:`DPOTrainer.train_step` returns it."""

    step: int  # the global step this update made
    stats: PairStats  # sums over this process's pairs of the step
    grad_norm: float  # before clipping; non-finite means the update was skipped
    lr: float  # the learning rate the update used
    rows: list[tuple[str, int]]  # (source, index) of the step's pairs on this process

    @property
    def skipped(self) -> bool:
        return not math.isfinite(self.grad_norm)


def step_groups(batches: Iterable[Batch], size: int) -> Iterator[list[Batch]]:
    """Consecutive micro-batches, ``size`` at a time: one optimizer step each (a short tail is left out)."""
    group: list[Batch] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []


def nonfinite_message(result: StepResult, in_row: int, output_dir: Path, limit: int = 8) -> str:
    shown = ", ".join(f"{source} row {index}" for source, index in result.rows[:limit])
    more = f" and {len(result.rows) - limit} more" if len(result.rows) > limit else ""
    return (
        f"step {result.step}: non-finite loss or gradients in {in_row} steps in a row "
        f"(train.max_nonfinite_steps); rows of the last batch: {shown}{more}; "
        f"the last good checkpoint is kept in {output_dir / 'checkpoints'}"
    )
