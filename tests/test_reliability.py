"""Fault injection: kill -9, signals, non-finite steps, failing disks. Nothing lost, nothing silent."""

from __future__ import annotations

import errno
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from preftune import DPOTrainer
from preftune.config import ConfigError
from preftune.errors import EXIT_STOPPED, CheckpointError, NonFiniteError
from preftune.strategy import SingleProcessStrategy
from preftune.training import runner
from preftune.training.checkpoint import complete_checkpoints
from toy_env import assert_close_weights, load_weights, logged_metrics, toy_config

# 96 steps with a checkpoint after each: about 2.5 s of training after 2-3 s of start-up.
RUN = {"ckpt.save_steps": 1, "train.max_epochs": 12, "train.eval_steps": 5}


WORKSPACE = {"n_train": 64, "hidden_size": 64}  # the sizes of this module's `ws` (tests/conftest.py)


@pytest.fixture(scope="module")
def reference_run(ws, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    out = tmp_path_factory.mktemp("uninterrupted")
    runner.train(toy_config(ws, out, **RUN))
    return out


def _cli_args(ws: dict[str, str], out: Path, opts: dict) -> list[str]:
    cfg = toy_config(ws, out, **opts)
    args = [sys.executable, "-m", "preftune", "train"]
    flat = {
        "output_dir": cfg.output_dir, "model.name_or_path": cfg.model.name_or_path, "data.train": ws["train"],
        "data.eval": ws["eval"], "data.max_len": cfg.data.max_len, "optim.lr": cfg.optim.lr,
        "train.micro_batch_size": cfg.train.micro_batch_size, "train.batch_size": cfg.train.batch_size,
        "log.progress": "false", **opts,
    }  # fmt: skip
    for key, value in flat.items():
        args += [f"--{key}", str(value)]
    return args


def _assert_same_run(a: Path, b: Path) -> None:
    assert_close_weights(load_weights(a / "final"), load_weights(b / "final"), rtol=1e-6, atol=1e-6)
    assert logged_metrics(a) == logged_metrics(b)


def _all_checkpoints_complete(out: Path) -> None:
    """Every folder named like a checkpoint is a whole one (half-written ones only ever carry a .tmp- name)."""
    root = out / "checkpoints"
    if root.exists():
        named = sorted(p for p in root.iterdir() if p.name.startswith("step-"))
        assert named == complete_checkpoints(root)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(ws, reference_run, tmp_path) -> None:
    out = tmp_path / "killed"
    args = _cli_args(ws, out, RUN)
    rng = random.Random(1234)
    kills = 0
    for _attempt in range(15):
        logged = _metric_lines(out)
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < 5:
            # Once training is under way, the kill lands at a random moment; with a checkpoint written every
            # step, often in the middle of writing one.
            _wait_for_metrics(out, proc, logged + 1)
            time.sleep(rng.uniform(0.0, 0.8))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        code = proc.wait(timeout=300)
        _all_checkpoints_complete(out)
        if code == 0:
            break
        assert code == -signal.SIGKILL, proc.stderr.read().decode()[-2000:] if proc.stderr else code
    else:
        pytest.fail("the run never completed")
    assert kills >= 3
    _assert_same_run(reference_run, out)


def test_crash_inside_checkpoint_write_resumes_from_previous(
    ws, reference_run, tmp_path, monkeypatch
) -> None:
    import preftune.training.checkpoint as ckpt

    real_fsync = ckpt.fsync_tree

    def crash_at_step_5(folder: Path) -> None:
        if folder.name == ".tmp-step-00000005":
            raise KeyboardInterrupt("killed while writing")  # after the files, before the rename
        real_fsync(folder)

    out = tmp_path / "crash"
    monkeypatch.setattr(ckpt, "fsync_tree", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        runner.train(toy_config(ws, out, **RUN))
    monkeypatch.setattr(ckpt, "fsync_tree", real_fsync)
    assert (out / "checkpoints" / ".tmp-step-00000005").exists()
    assert runner.resume_point(toy_config(ws, out, **RUN)).name == "step-00000004"
    runner.train(toy_config(ws, out, **RUN))
    _assert_same_run(reference_run, out)


def _metric_lines(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait_for_metrics(out: Path, proc: subprocess.Popen, lines: int = 1) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if _metric_lines(out) >= lines:
            return
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_finishes_step_checkpoints_and_resumes(ws, reference_run, tmp_path, sig) -> None:
    out = tmp_path / sig.name
    opts = {**RUN, "ckpt.save_steps": 1000}  # only the signal makes a checkpoint mid-run
    final_opts = {**RUN, "ckpt.save_steps": 1000}
    proc = subprocess.Popen(
        _cli_args(ws, out, opts), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _wait_for_metrics(out, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_STOPPED, stderr[-2000:]
    assert "rerun the same command to resume" in stderr and "Traceback" not in stderr
    assert not (out / "final").exists()
    saved = complete_checkpoints(out / "checkpoints")
    assert len(saved) == 1
    done = subprocess.run(_cli_args(ws, out, final_opts), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_close_weights(
        load_weights(reference_run / "final"), load_weights(out / "final"), rtol=1e-6, atol=1e-6
    )


@pytest.mark.slow
def test_second_signal_exits_at_once_without_corruption(ws, tmp_path) -> None:
    out = tmp_path / "twice"
    proc = subprocess.Popen(
        _cli_args(ws, out, RUN), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _wait_for_metrics(out, proc)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode in (128 + signal.SIGTERM, EXIT_STOPPED), stderr[-2000:]
    _all_checkpoints_complete(out)
    latest = runner.resume_point(toy_config(ws, out, **RUN))
    assert latest is not None and (latest / "trainer_state.json").is_file()


def _train_with_nan_gradients_at(cfg, steps: set[int]) -> None:
    """Train a fresh run as ``preftune train`` does, with every gradient NaN at the given optimizer steps."""
    trainer, steps_per_epoch = runner.build_trainer(cfg)

    def poison(trainer: DPOTrainer) -> None:
        if trainer.global_step + 1 in steps:
            for param in trainer.scorer.parameters():
                if param.grad is not None:
                    param.grad.fill_(float("nan"))

    trainer.on_gradients.append(poison)
    trainer.fit(cfg, 0, steps_per_epoch)


def test_nonfinite_step_is_skipped_and_counted(ws, tmp_path) -> None:
    cfg = toy_config(ws, tmp_path, **{"train.max_steps": 3, "ckpt.save_steps": 1, "ckpt.save_hf": True})
    _train_with_nan_gradients_at(cfg, {2})
    rows = [r for r in logged_metrics(tmp_path) if "loss" in r]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 0]
    assert math.isfinite(rows[2]["loss"])
    w1 = load_weights(tmp_path / "checkpoints" / "step-00000001" / "hf")
    w2 = load_weights(tmp_path / "checkpoints" / "step-00000002" / "hf")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)  # the poisoned step made no update


def test_too_many_nonfinite_steps_stop_the_run(ws, tmp_path) -> None:
    cfg = toy_config(ws, tmp_path, **{"train.max_nonfinite_steps": 2, "ckpt.save_steps": 2})
    with pytest.raises(NonFiniteError) as info:
        _train_with_nan_gradients_at(cfg, {3, 4})
    message = str(info.value)
    assert "step 4: non-finite loss or gradients in 2 steps in a row" in message
    assert "train.jsonl row" in message
    assert [p.name for p in complete_checkpoints(tmp_path / "checkpoints")] == ["step-00000002"]
    assert not (tmp_path / "final").exists()


def test_disk_full_while_saving_keeps_previous_checkpoint(ws, tmp_path, monkeypatch) -> None:
    real_save = SingleProcessStrategy.save_state

    def fill_disk(self, folder, module, optimizer, scheduler, client_state):
        if folder.name == ".tmp-step-00000004":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "model.safetensors"))
        real_save(self, folder, module, optimizer, scheduler, client_state)

    monkeypatch.setattr(SingleProcessStrategy, "save_state", fill_disk)
    with pytest.raises(CheckpointError) as info:
        runner.train(toy_config(ws, tmp_path, **{"ckpt.save_steps": 2}))
    message = str(info.value)
    assert "No space left on device" in message and "model.safetensors" in message
    assert "step-00000002 is intact" in message
    assert [p.name for p in complete_checkpoints(tmp_path / "checkpoints")] == ["step-00000002"]
    assert not (tmp_path / "checkpoints" / ".tmp-step-00000004").exists()
    monkeypatch.setattr(SingleProcessStrategy, "save_state", real_save)
    runner.train(toy_config(ws, tmp_path, **{"ckpt.save_steps": 2}))  # resumes from step 2 and finishes
    assert (tmp_path / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("make_bad", ["under_a_file", "read_only_fs"])
def test_unusable_output_dir_is_refused_before_training(ws, tmp_path, make_bad) -> None:
    if make_bad == "under_a_file":
        blocker = tmp_path / "a_file"
        blocker.write_text("x")
        out = blocker / "run"
    else:
        out = Path("/proc/preftune-cannot-write-here")
    with pytest.raises(ConfigError, match=r"^output_dir: "):
        runner.build_trainer(toy_config(ws, out))


@pytest.mark.slow
def test_bad_config_is_refused_before_any_model_loads(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "preftune", "train", "--model.name_or_path", "/does/not/exist",
         "--data.train", "x.jsonl", "--loss.label_smoothing", "0.7", "--output_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == "preftune: error: loss.label_smoothing: must be in [0, 0.5), got 0.7"
