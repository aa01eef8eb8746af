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
    set_model_state_dict,
    set_state_dict,
)


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns that it 'assumes' one process when no process group exists; for us that is the plan."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _options(module: nn.Module) -> StateDictOptions:
    """Frozen parameters (a LoRA run's base weights) are left out: they are reloaded from the model folder
    on resume, so a checkpoint holds only what training changes (megabytes of adapter, not the whole model).
    Loading is then non-strict about exactly those keys; DCP still fails on any requested key it lacks."""
    has_frozen = any(not p.requires_grad for p in module.parameters())
    return StateDictOptions(ignore_frozen_params=True, strict=not has_frozen)


def save_training_state(
    folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, is_main: bool
) -> None:
    model_sd, optim_sd = get_state_dict(module, optimizer, options=_options(module))
    with _single_process_quiet():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(folder / "dcp"))
    if is_main and scheduler is not None:
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")


def load_training_state(
    folder: Path, module: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any
) -> None:
    options = _options(module)
    if optimizer is None:
        model_sd = get_model_state_dict(module, options=options)
        with _single_process_quiet():
            dcp.load({"model": model_sd}, checkpoint_id=str(folder / "dcp"))
        set_state_dict(module, [], model_state_dict=model_sd, optim_state_dict={}, options=options)
        return
    model_sd, optim_sd = get_state_dict(module, optimizer, options=options)
    state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(folder / "dcp"))
    set_state_dict(
        module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"], options=options
    )
    if scheduler is not None and (folder / "scheduler.pt").is_file():
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded weights gathered to CPU (every process must call it; all receive them)."""
    state: Any = get_model_state_dict(
        module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    return state


def save_frozen_state(folder: Path, module: nn.Module) -> None:
    """A frozen module's whole state (a TR-DPO reference that has drifted from its files) in DCP form; a
    sharded module stays sharded, since DCP writes each process's shards."""
    state: Any = get_model_state_dict(module)
    with _single_process_quiet():
        dcp.save({"model": state}, checkpoint_id=str(folder))


def load_frozen_state(folder: Path, module: nn.Module) -> None:
    """Restore what :func:`save_frozen_state` wrote, resharded to this run's processes."""
    state: Any = get_model_state_dict(module)
    with _single_process_quiet():
        dcp.load({"model": state}, checkpoint_id=str(folder))
    set_model_state_dict(module, state)
