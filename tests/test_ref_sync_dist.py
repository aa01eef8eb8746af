"""TR-DPO's reference sync on 2 gloo processes (DDP, FSDP2, DeepSpeed ZeRO-3) equals one process, and the
sharded reference a checkpoint holds resumes exactly (FSDP2's on another process count)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from preftune.training import runner
from test_distributed import RUN, _assert_same_metrics, _assert_same_weights, _resume_copy, _torchrun
from toy_env import toy_config

# Every step syncs, half way: steps 2-4 each score against a reference that the previous steps moved.
SYNC = {"ref.sync_steps": 1, "ref.sync_alpha": 0.5}

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed"
)


WORKSPACE = {"n_train": 64, "n_eval": 13}  # the sizes of this module's `ws` (tests/conftest.py)


@pytest.fixture(scope="module")
def single_run(ws, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single_sync")
    runner.train(toy_config(ws, out, **RUN, **SYNC))
    return out


def _same_run(a: Path, b: Path) -> None:
    _assert_same_metrics(a, b)
    _assert_same_weights(a, b)


def _resumed_at_step_2(run: Path, dest: Path, reference_file: str) -> Path:
    """``run``'s step-2 checkpoint copied to ``dest``, checked to hold the synced reference as ``reference_file``."""
    _resume_copy(run, dest, step=2)
    assert (dest / "checkpoints" / "step-00000002" / "reference" / reference_file).is_file()
    return dest


@pytest.mark.slow
def test_ddp_sync_matches_one_process(ws, single_run, tmp_path) -> None:
    _torchrun(ws, tmp_path, "ddp", SYNC)
    _same_run(single_run, tmp_path)


@pytest.mark.slow
def test_fsdp2_sync_matches_one_process_and_resumes_on_one(ws, single_run, tmp_path) -> None:
    """The sharded reference is mixed shard by shard; its checkpoint (DCP, sharded) reshards onto 1 process."""
    two = tmp_path / "two"
    _torchrun(ws, two, "fsdp2", SYNC)
    _same_run(single_run, two)
    resumed = _resumed_at_step_2(two, tmp_path / "resumed_on_one", ".metadata")  # DCP's index file
    runner.train(toy_config(ws, resumed, **RUN, **SYNC))
    _same_run(single_run, resumed)


@pytest.mark.slow
@needs_deepspeed
def test_zero3_sync_matches_one_process_and_resumes(ws, single_run, tmp_path) -> None:
    """ZeRO-3 partitions mixed partition by partition (and the small persistent parameters whole); the
    checkpoint's reference, gathered one parameter at a time, resumes to the same run."""
    zero3 = {**SYNC, "strategy.zero_stage": 3}
    full = tmp_path / "full"
    _torchrun(ws, full, "deepspeed", zero3)
    _same_run(single_run, full)
    resumed = _resumed_at_step_2(full, tmp_path / "resumed", "model.safetensors")
    _torchrun(ws, resumed, "deepspeed", zero3)
    _same_run(single_run, resumed)


@pytest.mark.slow
def test_lora_deltas_under_ddp_match_one_process(ws, tmp_path) -> None:
    """Each process keeps its own deltas, mixed from identical adapters: the same run as one process."""
    lora = {**SYNC, "lora.rank": 8, "lora.alpha": 16, "optim.lr": 1e-2}
    runner.train(toy_config(ws, tmp_path / "one", **RUN, **lora))
    _torchrun(ws, tmp_path / "two", "ddp", lora)
    _same_run(tmp_path / "one", tmp_path / "two")
