"""The `preftune` command, run as a user runs it: a subprocess on a tiny model and generated data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from preftune.toy import synthetic_preference_rows
from toy_env import toy_workspace, write_jsonl


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "preftune", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    paths = toy_workspace(root, n_train=8, n_eval=8, hidden_size=64)
    paths["train"] = str(write_jsonl(root / "big_train.jsonl", synthetic_preference_rows(256, seed=11)))
    paths["eval"] = str(write_jsonl(root / "held_out.jsonl", synthetic_preference_rows(64, seed=12)))
    return paths


def test_train_learns_the_synthetic_preference(ws, tmp_path) -> None:
    out = tmp_path / "run"
    result = _cli(
        "train", "--model.name_or_path", ws["model"], "--data.train", ws["train"], "--data.eval", ws["eval"],
        "--output_dir", str(out), "--optim.lr", "1e-3", "--train.micro_batch_size", "8", "--train.batch_size", "16",
        "--train.max_epochs", "2", "--data.max_len", "64", "--log.progress", "false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/rewards/accuracies" in r]
    assert len(evals) == 2  # one per epoch
    # 64 held-out pairs, chance is 0.5 (and 0 at step 0, where every margin is a tie).
    assert evals[-1]["eval/rewards/accuracies"] >= 0.9, evals
    assert evals[-1]["eval/rewards/margins"] > 0
    assert (out / "final" / "model.safetensors").is_file()
    assert "done: Hugging Face model written to" in result.stdout
    # With deepspeed installed, loading the model imports it (through accelerate); without CUDA its accelerator
    # probe warned "Setting accelerator to CPU ..." in every run until the CLI set DS_ACCELERATOR=cpu first.
    assert "unable to detect it" not in result.stdout + result.stderr  # deepspeed logs to stdout


def test_eval_command_reports_metrics(ws, tmp_path) -> None:
    result = _cli(
        "eval", "--model.name_or_path", ws["model"], "--data.eval", ws["eval"], "--output_dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert metrics["eval/loss"] == pytest.approx(0.6931471805599453, rel=1e-6)  # policy == reference: ln 2
    assert metrics["eval/pairs"] == 64


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--loss.beta", "-1"], "loss.beta: must be > 0"),
        (["train", "--no.such", "1"], "unknown option --no.such"),
        (["train", "--model.name_or_path", "/nonexistent/model"], None),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_errors_are_one_line(args, needle, tmp_path) -> None:
    result = _cli(*args, "--output_dir", str(tmp_path / "o")) if args[0] == "train" else _cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    if needle is not None:
        assert result.stderr.strip().splitlines() == [
            f"preftune: error: {result.stderr.split('error: ', 1)[1].strip()}"
        ]
        assert needle in result.stderr


def test_help_lists_keys() -> None:
    result = _cli("train", "--help")
    assert result.returncode == 0
    assert "--loss.beta float (default: 0.1)" in result.stdout
    assert "--ckpt.save_steps" in result.stdout


def test_demo_runs_end_to_end(tmp_path) -> None:
    result = _cli(
        "demo",
        "--toy",
        "--output_dir",
        str(tmp_path / "demo"),
        "--train.max_steps",
        "3",
        "--log.progress",
        "false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out pairs" in result.stdout
    assert (tmp_path / "demo" / "final" / "config.json").is_file()
