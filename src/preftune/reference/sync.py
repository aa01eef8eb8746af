"""TR-DPO (Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good Alignment"): the reference follows
the policy, ``reference <- alpha * policy + (1 - alpha) * reference`` every ``steps`` optimizer steps.

Timing as TRL's ``SyncRefModelCallback``: the check runs after the optimizer step, on the step count already
advanced, so steps N, 2N, ... each end with a sync (a skipped, non-finite step included), before that step's
evaluation and checkpoint. Every parameter is mixed (buffers are not); how is the reference source's and the
strategy's business (:meth:`~preftune.reference.sources.LiveReference.sync_from`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..errors import CheckpointError
from ..strategy import Strategy
from .sources import LiveReference, ReferenceSource

FOLDER = "reference"  # inside a checkpoint: the reference as the syncs left it


class ReferenceSync:
    """An ``on_step_end`` hook of the trainer, and the reference's part of its checkpoints."""

    def __init__(
        self, reference: LiveReference, policy: nn.Module, strategy: Strategy, steps: int, alpha: float
    ) -> None:
        reference.check_sync(policy, strategy)
        self.reference, self.policy, self.strategy = reference, policy, strategy
        self.steps, self.alpha = steps, alpha

    def __call__(self, trainer: Any, result: Any) -> None:
        if result.step % self.steps == 0:
            self.reference.sync_from(self.policy, self.alpha, self.strategy)

    def drifted(self, step: int) -> bool:
        """After ``step`` steps the reference differs from the one it was loaded as."""
        return step >= self.steps

    def save(self, checkpoint: Path, step: int) -> None:
        """Before the first sync the reference is still its start and is rebuilt from it; after, it is saved."""
        if self.drifted(step):
            self.reference.save_synced(checkpoint / FOLDER, self.strategy)

    def load(self, checkpoint: Path, step: int) -> None:
        if not self.drifted(step):
            return
        if not (checkpoint / FOLDER).is_dir():
            raise CheckpointError(
                f"{checkpoint} holds no synced reference ({FOLDER}/) but ref.sync_steps {self.steps} synced it "
                f"by step {step}; resume with the ref.sync_steps it was trained with"
            )
        self.reference.load_synced(checkpoint / FOLDER, self.strategy)


def reference_sync(
    reference: ReferenceSource | None, policy: nn.Module, strategy: Strategy, steps: int, alpha: float
) -> ReferenceSync | None:
    """The sync for ``steps`` > 0 (None when off); only a reference scored live can move."""
    if not steps:
        return None
    if not isinstance(reference, LiveReference):
        kind = "no reference" if reference is None else type(reference).__name__
        raise ValueError(f"ref.sync_steps needs a live reference (a model or the LoRA base), not {kind}")
    return ReferenceSync(reference, policy, strategy, steps, alpha)
