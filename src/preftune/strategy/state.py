"""Training state on disk in torch.distributed.checkpoint (DCP) form, shared by every strategy.

One format for one process, DDP and FSDP2 means a checkpoint written by 2 processes resumes on 1 (and the
reverse): DCP stores tensors by fully-qualified name and reshards on load; no preftune code moves shards.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns that it 'assumes' one process when no process group exists; for us that is the plan."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_training_state(
    folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, is_main: bool
) -> None:
    model_sd, optim_sd = get_state_dict(module, optimizer)
    with _single_process_quiet():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder / "dcp"))
    if is_main and scheduler is not None:
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")


def load_training_state(
    folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any
) -> None:
    if optimizer is None:
        model_sd = get_model_state_dict(module)
        with _single_process_quiet():
            dcp.load({"model": model_sd}, checkpoint_id=str(folder / "dcp"))
        set_state_dict(module, [], model_state_dict=model_sd, optim_state_dict={})
        return
    model_sd, optim_sd = get_state_dict(module, optimizer)
    state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(folder / "dcp"))
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if scheduler is not None and (folder / "scheduler.pt").is_file():
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights gathered to CPU (every process must call it; all receive them)."""
    state: Any = get_model_state_dict(
        module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    return state
