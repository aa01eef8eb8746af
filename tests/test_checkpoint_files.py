"""A checkpoint folder may come from someone else: nothing in it is unpickled. A planted pickle is refused before
it can run, and a state file that is not what preftune writes is a CheckpointError naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from preftune.errors import CheckpointError
from preftune.training import runner
from test_trainer import _crash_after_checkpoint
from toy_env import toy_config

WORKSPACE = {"n_train": 16, "n_eval": 8}  # the sizes of this module's `ws` (tests/conftest.py)
RUN = {"ckpt.save_steps": 1, "train.max_steps": 2}


class _Payload:
    """Unpickling this creates ``marker``: what a hostile file would do instead (run any code it names)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def _stopped_run(ws: dict[str, str], out: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run stopped right after its step-1 checkpoint; returns that checkpoint's folder."""
    with monkeypatch.context() as patch:
        _crash_after_checkpoint(patch, step=1)
        with pytest.raises(KeyboardInterrupt):
            runner.train(toy_config(ws, out, **RUN))
    (folder,) = (out / "checkpoints").glob("step-*")
    return folder


def test_a_checkpoint_holds_json_state_and_no_pickle(ws, tmp_path, monkeypatch) -> None:
    folder = _stopped_run(ws, tmp_path / "out", monkeypatch)
    names = {p.name for p in folder.iterdir()}
    assert {"rng-rank0.json", "scheduler.json", "trainer_state.json"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pkl", ".bin"))]
    assert json.loads((folder / "trainer_state.json").read_text())["extra"] == {"loss_state": {}}


@pytest.mark.parametrize("name", ["rng-rank0.pt", "scheduler.pt", "trainer_extra.pt"])
def test_a_planted_pickle_is_refused_and_never_run(ws, tmp_path, monkeypatch, name: str) -> None:
    out = tmp_path / "out"
    folder = _stopped_run(ws, out, monkeypatch)
    marker = tmp_path / "payload-ran"
    torch.save(_Payload(marker), folder / name)
    with pytest.raises(CheckpointError, match=rf"{folder}.* holds {name}: pickled state"):
        runner.train(toy_config(ws, out, **RUN))  # ckpt.resume auto finds the folder
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("rng-rank0.json", '{"torch": [1, 2', "not a readable checkpoint state file"),
        ("rng-rank0.json", "[1, 2]", "holds a list, not the dict"),
        ("rng-rank0.json", '{"torch": [1], "python": [3, [], null], "numpy": []}', "does not hold the state"),
        ("scheduler.json", '{"base_lrs": "0.1"}', "does not hold the state"),
        ("trainer_state.json", "\x00\x01", "not a readable checkpoint state file"),
    ],
)
def test_a_damaged_state_file_is_a_checkpoint_error_naming_it(
    ws, tmp_path, monkeypatch, name, text, needle
) -> None:
    out = tmp_path / "out"
    folder = _stopped_run(ws, out, monkeypatch)
    (folder / name).write_text(text)
    with pytest.raises(CheckpointError, match=rf"{folder / name}: {needle}"):
        runner.train(toy_config(ws, out, **RUN))
