"""DDP and FSDP2 under torchrun with 2 gloo processes on CPU: parity with one process, resume across sizes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from launch import TORCHRUN, launch, train_args
from preftune.config import ConfigError
from preftune.training import runner
from toy_env import assert_close_weights, assert_same_metrics, load_weights, toy_config

# Adam's eps is raised so weight comparisons are not dominated by Adam turning gradients at float-rounding
# level into full-size steps; per-step losses and rewards are compared at the default settings' precision.
RUN = {
    "train.max_steps": 4, "train.batch_size": 8, "train.micro_batch_size": 2, "ckpt.save_steps": 2,
    "data.shuffle": True, "optim.adam_eps": 1e-3, "train.eval_steps": 2,
}  # fmt: skip


# 13 eval pairs: shards of 7 and 6 make 4 and 3 eval batches, so the processes' forward counts differ
# (an FSDP2 evaluation hung there until short shards repeated a batch).
WORKSPACE = {"n_train": 64, "n_eval": 13}  # the sizes of this module's `ws` (tests/conftest.py)


@pytest.fixture(scope="module")
def single_run(ws, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    runner.train(toy_config(ws, out, **RUN))
    return out


def _torchrun(
    ws: dict[str, str], out: Path, strategy: str, extra: dict | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    return launch(train_args(TORCHRUN, ws, out, strategy, {**RUN, **(extra or {})}), ok)


def _assert_same_metrics(a: Path, b: Path) -> None:
    assert_same_metrics(
        a, b, atol=1e-6
    )  # which pairs share a micro-batch row differs between 1 and 2 processes


def _assert_same_weights(a: Path, b: Path) -> None:
    assert_close_weights(load_weights(a / "final"), load_weights(b / "final"), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.equivalence
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_match_one(ws, single_run, tmp_path, strategy) -> None:
    out = tmp_path / strategy
    result = _torchrun(ws, out, strategy)
    # Rank 0 tokenised each split once; rank 1 only mapped the same store (it never builds one).
    assert result.stdout.count("data train: tokenised 64 rows into") == 1, result.stdout
    assert sorted(p.name.startswith(".tmp") for p in (out / "data_cache").iterdir()) == [False, False]
    _assert_same_metrics(single_run, out)
    _assert_same_weights(single_run, out)
    assert (
        json.loads((out / "data_report.json").read_text())["train"]["kept"] == 64
    )  # written once, by rank 0


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_loss_options_on_two_processes_match_one(ws, tmp_path, strategy) -> None:
    """A weighted mixture under an f-divergence, with WPO weights (from the chunked head's lse outputs, under
    FSDP2 from a sharded head) and LD-DPO sums, each term's metric included, is the same on 2 processes as on 1
    (terms that sort or token-weight over a micro-batch, aot and sft, are per process by design)."""
    loss = {"loss.type": "sigmoid,hinge", "loss.weights": "0.7,0.3", "loss.f_divergence": "js",
            "loss.wpo": "true", "loss.ld_alpha": "0.5"}  # fmt: skip
    runner.train(toy_config(ws, tmp_path / "one", **RUN, **loss))
    _torchrun(ws, tmp_path / "two", strategy, loss)
    _assert_same_metrics(tmp_path / "one", tmp_path / "two")
    first = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    assert "loss/hinge" in first and 0 < first["wpo/weight"] <= 1


def _resume_copy(source: Path, dest: Path, step: int) -> None:
    """A run stopped after ``step``: its checkpoint and the metrics it had logged up to then."""
    name = f"step-{step:08d}"
    shutil.copytree(source / "checkpoints" / name, dest / "checkpoints" / name)
    shutil.copy(source / "metrics.jsonl", dest / "metrics.jsonl")


@pytest.mark.slow
def test_fsdp2_checkpoint_resumes_on_one_process(ws, single_run, tmp_path) -> None:
    two = tmp_path / "two"
    _torchrun(ws, two, "fsdp2")
    resumed = tmp_path / "resumed_on_one"
    _resume_copy(two, resumed, step=2)
    runner.train(toy_config(ws, resumed, **RUN))
    _assert_same_weights(single_run, resumed)
    _assert_same_metrics(single_run, resumed)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two(ws, single_run, tmp_path) -> None:
    resumed = tmp_path / "resumed_on_two"
    _resume_copy(single_run, resumed, step=2)
    _torchrun(ws, resumed, "fsdp2")
    _assert_same_weights(single_run, resumed)
    _assert_same_metrics(single_run, resumed)


@pytest.mark.slow
def test_a_data_error_while_building_stops_both_processes(ws, tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "answer": " a"}\n')
    result = _torchrun(
        ws, tmp_path / "out", "ddp", {"data.train": str(bad), "data.eval": ws["eval"]}, ok=False
    )
    assert "missing key 'chosen'" in result.stderr and "bad.jsonl:1" in result.stderr


def test_distributed_strategy_outside_torchrun_is_refused(ws, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match=r"strategy\.name: ddp needs torchrun"):
        runner.build_trainer(toy_config(ws, tmp_path, **{"strategy.name": "ddp"}))


def test_cpu_offload_is_refused_without_gpu(ws, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match=r"strategy\.cpu_offload: FSDP2 CPU offload needs a GPU"):
        runner.build_trainer(
            toy_config(ws, tmp_path, **{"strategy.name": "fsdp2", "strategy.cpu_offload": True})
        )


@pytest.mark.slow
@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="FSDP2 CPU offload needs 2 GPUs (PyTorch limitation)"
)
def test_fsdp2_cpu_offload_on_gpus(ws, single_run, tmp_path) -> None:
    out = tmp_path / "offload"
    _torchrun(ws, out, "fsdp2", {"strategy.cpu_offload": "true"})
    _assert_same_metrics(single_run, out)


@pytest.mark.slow
def test_fsdp2_with_reference_offloaded(ws, single_run, tmp_path) -> None:
    out = tmp_path / "ref_offload"
    _torchrun(ws, out, "fsdp2", {"ref.offload": "true"})
    _assert_same_metrics(single_run, out)


@pytest.mark.slow
def test_sigterm_to_torchrun_checkpoints_all_ranks_then_resumes(ws, single_run, tmp_path) -> None:
    import signal
    import time

    out = tmp_path / "sigterm"
    opts = {**RUN, "train.max_steps": 40, "train.max_epochs": 8, "ckpt.save_steps": 1000}
    args = train_args(TORCHRUN, ws, out, "ddp", opts)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both workers
    _, stderr = proc.communicate(timeout=120)
    assert "rerun the same command to resume" in stderr, stderr[-3000:]
    from preftune.training.checkpoint import complete_checkpoints

    saved = complete_checkpoints(out / "checkpoints")
    assert len(saved) == 1 and not (out / "final").exists()
    step = json.loads((saved[0] / "trainer_state.json").read_text())["global_step"]
    assert 1 <= step < 40
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 40
    uninterrupted = tmp_path / "uninterrupted"
    runner.train(toy_config(ws, uninterrupted, **opts))
    _assert_same_weights(uninterrupted, out)
    _assert_same_metrics(uninterrupted, out)
