"""The one door between the training loop and how it is executed (one process, DDP, FSDP2, DeepSpeed).

The trainer calls only these methods; nothing else in preftune's loop imports torch.distributed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class Strategy(Protocol):
    rank: int
    world_size: int
    device: torch.device
    # Micro-steps per optimizer step on each process when a step is split by count (train.micro_batch_size);
    # a token budget (train.micro_batch_tokens) may split a step into more. The trainer weights each one.
    accumulation_steps: int

    def is_main(self) -> bool:
        """True on the process that prints, writes metrics and exports."""
        ...

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Called before prepare_model with the optimizer the user built on the model's parameters, so a
        strategy that replaces parameters (FSDP2) can repoint it."""
        ...

    def prepare_model(self, module: nn.Module, trainable: bool) -> nn.Module:
        """Move and wrap a module (e.g. DDP / FSDP2) for training, or for forward-only use if not trainable."""
        ...

    def unwrap(self, module: nn.Module) -> nn.Module:
        """The plain module under any wrapper."""
        ...

    def accumulate(self, module: nn.Module, is_last_micro_step: bool) -> AbstractContextManager[Any]:
        """Context for one micro-step's forward+backward; skips gradient sync before the last micro-step. The
        caller says which is last, so a step may hold any number of micro-steps."""
        ...

    def backward(self, loss: Tensor, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Backward of one micro-step's loss, which the trainer has already weighted by the micro-step's share of
        the step (:func:`~preftune.training.step.row_shares`): a strategy adds no scaling of its own."""
        ...

    def optimizer_step(
        self, optimizer: torch.optim.Optimizer, module: nn.Module, scheduler: Any, max_norm: float
    ) -> float:
        """Clip (if max_norm > 0), step, zero grads, advance the scheduler; returns the pre-clip grad norm.

        A non-finite norm skips the update (the gradients are dropped) while the scheduler still advances, so
        the learning-rate schedule stays aligned with the data position.
        """
        ...

    def all_reduce(self, values: dict[str, float], op: str = "sum") -> dict[str, float]:
        """Reduce scalars over processes ('sum' or 'max'); identity on one process."""
        ...

    def all_reduce_tensor(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """Reduce a tensor elementwise over processes ('sum' or 'max'), returned on the tensor's device;
        identity on one process. For bulk results (e.g. precomputed reference log-probs), not per-step metrics."""
        ...

    def barrier(self) -> None: ...

    def save_state(
        self,
        folder: Path,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        client_state: dict[str, Any],
    ) -> None:
        """Write model, optimizer and scheduler state into ``folder`` (every process calls it).

        ``client_state`` (step, consumed samples) goes into engines that keep their own (DeepSpeed); the
        trainer also writes it next to the state, so other strategies may ignore it.
        """
        ...

    def load_state(
        self, folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any
    ) -> None:
        """Restore what :meth:`save_state` wrote (every process calls it)."""
        ...

    def mix_weights(self, target: nn.Module, source: nn.Module, alpha: float) -> None:
        """``target <- alpha * source + (1 - alpha) * target`` parameter by parameter, in place and in the
        target's dtype, each process on the part it holds (never a whole sharded model): TR-DPO's reference
        update. ``target`` and ``source`` are prepared modules of one architecture."""
        ...

    def save_frozen(self, folder: Path, module: nn.Module) -> None:
        """Write a frozen prepared module's weights into the new folder ``folder`` (every process calls it)."""
        ...

    def load_frozen(self, folder: Path, module: nn.Module) -> None:
        """Restore what :meth:`save_frozen` wrote (every process calls it)."""
        ...

    def full_state_dict(self, module: nn.Module) -> dict[str, Tensor] | None:
        """The whole model's weights on the main process (None elsewhere), for a Hugging Face export."""
        ...

    def print(self, *args: Any) -> None:
        """Print on the main process only."""
        ...

    def close(self) -> None:
        """Release the process group (after a barrier); no-op on one process."""
        ...


T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class SizedIterable(Protocol[T_co]):
    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[T_co]: ...


def lockstep(
    strategy: Strategy, batches: SizedIterable[T], filler: T | None = None
) -> Iterator[tuple[T, bool]]:
    """Each local batch as ``(batch, True)``, then ``(last batch, False)`` until this process has run as many
    forwards as the busiest one; a caller discards the results of the repeats.

    A sharded model (FSDP2, ZeRO-3) gathers its weights collectively inside every forward, so every process
    must run every forward; shards that differ by a pair may differ by a batch. Evaluation and the reference
    precompute pass both go through here. A process with no batch of its own repeats ``filler``, and is
    refused when there is none.
    """
    local = len(batches)
    most = int(strategy.all_reduce({"batches": float(local)}, op="max")["batches"])
    last = filler
    for batch in batches:
        last = batch
        yield batch, True
    if local < most and last is None:
        raise RuntimeError("this process has no batch to run while another has; give every process data")
    for _ in range(most - local):
        assert last is not None
        yield last, False
