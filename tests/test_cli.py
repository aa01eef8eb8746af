"""The `preftune` command, run as a user runs it: a subprocess on a tiny model and generated data."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from launch import run_cli
from preftune.toy import synthetic_preference_rows
from toy_env import toy_workspace, write_jsonl


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    paths = toy_workspace(root, n_train=8, n_eval=8, hidden_size=64)
    paths["train"] = str(write_jsonl(root / "big_train.jsonl", synthetic_preference_rows(256, seed=11)))
    paths["eval"] = str(write_jsonl(root / "held_out.jsonl", synthetic_preference_rows(64, seed=12)))
    return paths


@pytest.mark.slow
def test_train_learns_the_synthetic_preference(ws, tmp_path) -> None:
    out = tmp_path / "run"
    result = run_cli(
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
    summary = result.stdout[result.stdout.index("done in ") :]
    assert summary.splitlines()[0].endswith(": 32 steps (2.00 epochs, 512 pairs)")
    assert "held-out (step 32)" in summary and "reward accuracy" in summary
    assert f"model        {out / 'final'}" in summary and f"metrics      {out / 'metrics.jsonl'}" in summary
    # With deepspeed installed, loading the model imports it (through accelerate); without CUDA its accelerator
    # probe warned "Setting accelerator to CPU ..." in every run until the CLI set DS_ACCELERATOR=cpu first.
    assert "unable to detect it" not in result.stdout + result.stderr  # deepspeed logs to stdout


@pytest.mark.slow
def test_train_takes_a_token_budget(ws, tmp_path) -> None:
    out = tmp_path / "budget"
    result = run_cli(
        "train", "--model.name_or_path", ws["model"], "--data.train", ws["train"], "--output_dir", str(out),
        "--train.micro_batch_size", "4", "--train.batch_size", "8", "--train.micro_batch_tokens", "100",
        "--train.max_steps", "2", "--data.max_len", "64", "--log.progress", "false", "--log.report", "false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2] and all(row["pairs"] == 8 for row in rows)
    assert "micro_batch_tokens: 100" in (out / "config.yaml").read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        ("--loss.wpo", "true"),  # auto layout (prefix_shared), live reference
        (
            "--loss.ld_alpha",
            "0.5",
            "--ref.precompute",
            "true",
            "--train.layout",
            "packed",
        ),  # cached reference
    ],
)
def test_train_with_wpo_or_ld_alpha_logs_finite_losses(ws, tmp_path, options) -> None:
    out = tmp_path / "run"
    result = run_cli(
        "train", "--model.name_or_path", ws["model"], "--data.train", ws["train"], "--data.eval", ws["eval"],
        "--output_dir", str(out), "--optim.lr", "1e-3", "--train.micro_batch_size", "4", "--train.batch_size", "8",
        "--train.max_steps", "3", "--data.max_len", "64", "--log.progress", "false", "--log.report", "false",
        "--data.max_samples", "24", "--data.eval_max_samples", "8", *options,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval/loss" in r]
    assert len(train) == 3 and evals
    assert all(math.isfinite(r["loss"]) for r in train) and math.isfinite(evals[-1]["eval/loss"])
    wpo = options[0] == "--loss.wpo"
    # The mean WPO weight is logged when (and only when) WPO is on; min(1, w) keeps it in (0, 1].
    assert all(("wpo/weight" in r) == wpo for r in train) and ("eval/wpo/weight" in evals[-1]) == wpo
    if wpo:
        assert all(0 < r["wpo/weight"] <= 1 for r in train)


@pytest.mark.slow
def test_eval_command_reports_metrics(ws, tmp_path) -> None:
    result = run_cli(
        "eval", "--model.name_or_path", ws["model"], "--data.eval", ws["eval"], "--output_dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert metrics["eval/loss"] == pytest.approx(0.6931471805599453, rel=1e-6)  # policy == reference: ln 2
    assert metrics["eval/pairs"] == 64
    assert f"wrote {tmp_path / 'eval_metrics.json'}" in result.stdout


@pytest.mark.slow
def test_eval_checks_only_what_it_uses(ws, tmp_path) -> None:
    """A micro batch bigger than the (unused) training batch is fine for evaluation; the default output
    folder is named when it is the one written to."""
    result = run_cli(
        "eval", "--model.name_or_path", ws["model"], "--data.eval", ws["eval"], "--train.micro_batch_size", "16",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(the default output_dir; --output_dir sets another)" in result.stdout
    assert (tmp_path / "runs" / "preftune" / "eval_metrics.json").is_file()


@pytest.mark.slow
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
    result = run_cli(*args, "--output_dir", str(tmp_path / "o")) if args[0] == "train" else run_cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    if needle is not None:
        assert result.stderr.strip().splitlines() == [
            f"preftune: error: {result.stderr.split('error: ', 1)[1].strip()}"
        ]
        assert needle in result.stderr


@pytest.mark.slow
def test_help_lists_keys() -> None:
    result = run_cli("train", "--help")
    assert result.returncode == 0
    assert "--loss.beta float (default: 0.1)" in result.stdout
    assert "--ckpt.save_steps" in result.stdout
    assert "--train.micro_batch_tokens int (default: 0)" in result.stdout
    assert "padded its rectangle" in result.stdout  # what a layout's tokens are, said in the key's help
    assert "--model.dtype {float32,bfloat16,float16} (default: 'float32')" in result.stdout
    assert "--iterate." not in result.stdout  # train reads no iterate.* key
    assert "--iterate.rounds" in run_cli("iterate", "--help").stdout


@pytest.mark.slow
def test_help_into_a_closed_pipe_is_quiet() -> None:
    shell = f"{sys.executable} -m preftune eval --help | head -3"
    result = subprocess.run(shell, shell=True, capture_output=True, text=True, timeout=120)
    assert len(result.stdout.splitlines()) == 3
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr


@pytest.mark.slow
def test_a_missing_model_folder_is_named_as_a_folder(tmp_path) -> None:
    result = run_cli("train", "--model.name_or_path", "./nope", "--data.train", "x.jsonl", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "preftune: error: model.name_or_path: no folder './nope' exists (and it is not a Hub name either)"
    )


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path) -> None:
    result = run_cli(
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
    # the run report: log.report is on by default
    assert f"report: {tmp_path / 'demo' / 'report.html'}" in result.stdout
