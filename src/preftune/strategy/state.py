"""Training state on disk in torch.distributed.checkpoint (DCP) form, shared by every strategy, and the JSON
files of preftune's own state (the scheduler's here; the RNG and trainer state in training/checkpoint.py).

One format for one process, DDP and FSDP2 means a checkpoint written by 2 processes resumes on 1 (and the
reverse): DCP stores tensors by fully-qualified name and reshards on load; no preftune code moves shards.
preftune's own state is never pickled: a checkpoint may come from someone else, and unpickling a file runs the
code it names. (DCP's ``.metadata`` is a pickle that torch reads; DeepSpeed reads its own files: those stay
trusted, see the README.)
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

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

from ..errors import CheckpointError

SCHEDULER_FILE = "scheduler.json"
# Files of an older preftune that pickled its state: refused, never loaded.
PICKLED_FILES = ("scheduler.pt", "trainer_extra.pt", "rng-rank*.pt")

Value = TypeVar("Value")


def read_state_file(path: Path, kind: type[Value]) -> Value:
    """A JSON state file of a checkpoint, which must hold a ``kind``; anything else is a CheckpointError naming it."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint state file ({exc})") from None
    if not isinstance(value, kind):
        raise CheckpointError(
            f"{path}: holds a {type(value).__name__}, not the {kind.__name__} a checkpoint writes"
        )
    return value


def checked(path: Path, restore: Callable[[Any], Any], value: Any) -> None:
    """``restore(value)``, read from ``path``; a value of the wrong shape is a CheckpointError naming the file."""
    try:
        restore(value)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: does not hold the state this run restores ({type(exc).__name__}: {exc})"
        ) from None


def refuse_pickles(folder: Path) -> None:
    """Refuse a checkpoint holding one of the pickled state files older versions wrote (or someone planted)."""
    found = sorted(p.name for pattern in PICKLED_FILES for p in folder.glob(pattern))
    if found:
        raise CheckpointError(
            f"{folder} holds {', '.join(found)}: pickled state, which preftune no longer loads (unpickling runs "
            "whatever code the file names); it was written by an older preftune or by someone else. Start a new "
            "run, or resume from a checkpoint this version wrote"
        )


def save_scheduler(folder: Path, scheduler: Any) -> None:
    if scheduler is not None:
        (folder / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict()))


def load_scheduler(folder: Path, scheduler: Any) -> None:
    """The saved schedule, which must have the keys and value types of this run's scheduler: a scheduler
    takes any dict into its attributes unchecked, so a wrong one would only fail steps later."""
    path = folder / SCHEDULER_FILE
    if scheduler is None or not path.is_file():
        return
    saved, own = read_state_file(path, dict), scheduler.state_dict()
    checked(path, lambda state: _same_shape(state, own), saved)
    scheduler.load_state_dict(saved)


def _same_shape(saved: dict[str, Any], own: dict[str, Any]) -> None:
    if saved.keys() != own.keys():
        raise KeyError(f"keys {sorted(saved)}, this run's scheduler has {sorted(own)}")
    for key, value in own.items():
        if value is not None and type(saved[key]) is not type(value):
            raise TypeError(f"{key} is a {type(saved[key]).__name__}, not a {type(value).__name__}")


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
    if is_main:
        save_scheduler(folder, scheduler)


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
    load_scheduler(folder, scheduler)


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
