"""One process, one device: the reference implementation of the Strategy protocol."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .mixing import mix_, paired_parameters
from .state import load_frozen_state, load_training_state, save_frozen_state, save_training_state


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class SingleProcessStrategy:
    rank = 0
    world_size = 1

    def __init__(self, device: torch.device | str | None = None, accumulation_steps: int = 1) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.accumulation_steps = accumulation_steps

    def is_main(self) -> bool:
        return True

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        pass

    def prepare_model(self, module: nn.Module, trainable: bool) -> nn.Module:
        return module.to(self.device)

    def unwrap(self, module: nn.Module) -> nn.Module:
        return module

    def accumulate(self, module: nn.Module, is_last_micro_step: bool) -> AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def backward(self, loss: Tensor, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        loss.backward()

    def optimizer_step(
        self, optimizer: torch.optim.Optimizer, module: nn.Module, scheduler: Any, max_norm: float
    ) -> float:
        params = [p for p in module.parameters() if p.grad is not None]
        # clip_grad_norm_ with an infinite bound measures without clipping, so the norm is always logged.
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):  # sharded (FSDP2) gradients give a DTensor norm
            norm = norm.full_tensor()
        if torch.isfinite(norm):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        return float(norm)

    def all_reduce(self, values: dict[str, float], op: str = "sum") -> dict[str, float]:
        keys = sorted(values)
        # float64 so sums of many pairs' values stay exact to well below the metrics' printed precision.
        buf = self.all_reduce_tensor(torch.tensor([values[k] for k in keys], dtype=torch.float64), op)
        return dict(zip(keys, buf.tolist(), strict=True))

    def all_reduce_tensor(self, tensor: Tensor, op: str = "sum") -> Tensor:
        if op not in ("sum", "max"):
            raise ValueError(f"unsupported reduce op {op!r}")
        return tensor

    def barrier(self) -> None:
        pass

    def save_state(
        self,
        folder: Path,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        client_state: dict[str, Any],
    ) -> None:
        save_training_state(folder, module, optimizer, scheduler, is_main=self.is_main())

    def load_state(
        self, folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any
    ) -> None:
        load_training_state(folder, module, optimizer, scheduler)

    def mix_weights(self, target: nn.Module, source: nn.Module, alpha: float) -> None:
        for _, mine, theirs in paired_parameters(self.unwrap(target), self.unwrap(source)):
            mix_(mine, theirs, alpha)

    def save_frozen(self, folder: Path, module: nn.Module) -> None:
        save_frozen_state(folder, module)

    def load_frozen(self, folder: Path, module: nn.Module) -> None:
        load_frozen_state(folder, module)

    def full_state_dict(self, module: nn.Module) -> dict[str, Tensor] | None:
        return self.unwrap(module).state_dict()

    def print(self, *args: Any) -> None:
        print(*args, flush=True)

    def close(self) -> None:
        pass
