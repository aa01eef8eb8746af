"""Atomic, rotated, resumable checkpoints and the Hugging Face export.

Layout: ``<output_dir>/checkpoints/step-00000012/`` holding the strategy's model/optimizer files and
``scheduler.json``, ``rng-rank<r>.json`` and ``trainer_state.json``. A checkpoint is written under a ``.tmp-``
name and renamed only when complete, and removed by renaming it to ``.trash-`` before deleting, so a folder named
``step-*`` is always whole; older ones are removed only after the new one is in place.

Nothing of ours in a checkpoint is a pickle: a checkpoint folder may come from someone else, and unpickling runs
whatever code the file names. The RNG, scheduler and trainer states are JSON; the weights and optimizer state are
the strategy's (safetensors-backed DCP, or DeepSpeed's own files, which DeepSpeed loads and which are trusted).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..model.lora import is_peft_model, save_peft
from ..strategy import Strategy
from ..strategy.state import checked, read_state_file, refuse_pickles

STATE_FILE = "trainer_state.json"


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (the renamed folders that hold a trainer state)."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None


def saved_reference_state(folder: Path | None) -> dict[str, str]:
    """The reference state a checkpoint was trained with ({} when none, or not from a cached reference)."""
    if folder is None or not (folder / STATE_FILE).is_file():
        return {}
    return dict(json.loads((folder / STATE_FILE).read_text()).get("reference") or {})


def _rng_state() -> dict[str, Any]:
    """Every generator's state as JSON numbers (torch's and CUDA's bytes, Python's and numpy's words)."""
    version, words, gauss = random.getstate()
    numpy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, cached = numpy_state
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().tolist(),
        "python": [version, list(words), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    version, words, gauss = state["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def _discard(folder: Path) -> None:
    """Delete a checkpoint so that no step-* folder is ever half-deleted: rename (atomic) first, then remove."""
    trash = folder.with_name(f".trash-{folder.name}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def save_checkpoint(
    root: Path,
    step: int,
    strategy: Strategy,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    keep: int,
    export: Any = None,
    extra: dict[str, Any] | None = None,
    reference: Any = None,
) -> Path:
    """Write checkpoint ``step`` atomically, then drop all but the newest ``keep``.

    ``export`` (optional) is called with a folder to also write a Hugging Face copy inside the checkpoint;
    ``extra`` holds more trainer state as JSON values (e.g. a loss's running statistics), kept in the state file;
    ``reference`` (optional) is called on every process with the folder to save a reference that has moved.
    """
    final = _step_dir(root, step)
    tmp = root / f".tmp-step-{step:08d}"
    try:
        if strategy.is_main():
            root.mkdir(parents=True, exist_ok=True)
            for leftover in [*root.glob(".trash-*"), tmp]:  # from a run killed while deleting or writing
                shutil.rmtree(leftover, ignore_errors=True)
            tmp.mkdir()
        strategy.barrier()
        strategy.save_state(tmp, module, optimizer, scheduler, trainer_state)
        if reference is not None:
            reference(tmp)
        if export is not None:
            export(tmp / "hf")
        _write(tmp, strategy, trainer_state, extra)
        if strategy.is_main():
            _publish(tmp, final, root, keep)
        strategy.barrier()
    except OSError as exc:
        # Only the temporary folder was touched, so the previous checkpoint is still whole.
        if strategy.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(root)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        where = f" ({exc.filename})" if exc.filename else ""
        raise CheckpointError(
            f"writing checkpoint step {step} to {tmp} failed: {exc.strerror or exc}{where}; {kept}"
        ) from None
    return final


def _write(tmp: Path, strategy: Strategy, state: dict[str, Any], extra: dict[str, Any] | None) -> None:
    """Each process's RNG state, then (main process) the trainer's state file with its extra state, which goes
    last: its presence marks the folder complete even before the rename."""
    (tmp / f"rng-rank{strategy.rank}.json").write_text(json.dumps(_rng_state()))
    strategy.barrier()
    if strategy.is_main():
        (tmp / STATE_FILE).write_text(json.dumps({**state, "extra": extra or {}}, indent=2))
        fsync_tree(tmp)


def _publish(tmp: Path, final: Path, root: Path, keep: int) -> None:
    """Rename the whole folder into place, then drop all but the newest ``keep`` (main process only)."""
    if final.exists():
        _discard(final)
    os.replace(tmp, final)
    for old in complete_checkpoints(root)[:-keep]:
        _discard(old)


def load_checkpoint(
    folder: Path,
    strategy: Strategy,
    module: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any,
) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its trainer state. A file that is not
    what it should be is a :class:`CheckpointError` naming it; no file is unpickled."""
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{folder} is not a complete preftune checkpoint (no {STATE_FILE})")
    refuse_pickles(folder)
    state = read_state_file(state_file, dict)
    strategy.load_state(folder, module, optimizer, scheduler)
    rng_file = folder / f"rng-rank{strategy.rank}.json"
    if rng_file.is_file():
        checked(rng_file, _set_rng_state, read_state_file(rng_file, dict))
    state.setdefault("extra", {})
    return state


def export_hf(
    folder: Path,
    strategy: Strategy,
    module: nn.Module,
    hf_model: nn.Module,
    tokenizer: Any,
    config_yaml: str | None,
    lora_export: str = "merged",
) -> None:
    """Write a Hugging Face folder (config, safetensors weights, tokenizer) loadable with from_pretrained.

    ``module`` is the prepared scorer (its state dict keys start with ``model.``); ``hf_model`` the bare LM,
    or a peft model, written as ``lora_export`` says (merged into plain weights, or the adapter alone).
    """
    state = strategy.full_state_dict(module)
    if strategy.is_main():
        assert state is not None
        weights = {k.removeprefix("model."): v for k, v in state.items()}
        tmp = folder.with_name(f".tmp-{folder.name}")
        if tmp.exists():
            shutil.rmtree(tmp)
        if is_peft_model(hf_model):
            save_peft(hf_model, weights, tmp, lora_export)
        else:
            hf_model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)  # type: ignore[operator]
        tokenizer.save_pretrained(tmp)
        if config_yaml is not None:
            (tmp / "preftune_config.yaml").write_text(config_yaml)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    strategy.barrier()
