"""``preftune demo --toy``: train a tiny random-init model on a generated preference task, offline, in about a
minute (tests and CI use it). Plain ``preftune demo`` is the real-model demo in :mod:`preftune.showcase.realdemo`.

Chosen responses close politely, rejected ones rudely (see :func:`preftune.toy.synthetic_preference_rows`);
held-out reward accuracy starts at 0 (policy == reference, every margin is a tie) and should end near 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import read_jsonl, write_jsonl
from ..run_folder import RunFolder
from ..toy import synthetic_preference_rows, write_toy_model_dir
from ..training import runner
from ..validate import validated_config

DEMO_DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/demo",
    "loss.beta": 0.1,
    "optim.lr": 1e-3,
    "optim.warmup_ratio": 0.1,
    "train.micro_batch_size": 8,
    "train.batch_size": 16,
    "train.max_epochs": 2,
    "train.eval_steps": 10,
    "train.eval_at_start": True,
    "data.max_len": 64,
}


def run_demo(argv: list[str]) -> int:
    if "--toy" not in argv:
        from .realdemo import run_real_demo

        return run_real_demo(argv)
    cfg = validated_config([a for a in argv if a != "--toy"], DEMO_DEFAULTS)
    out = Path(cfg.output_dir)
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    if not cfg.model.name_or_path:
        cfg.model.name_or_path = str(write_toy_model_dir(inputs / "toy-model"))
    if not cfg.data.train:
        write_jsonl(inputs / "train.jsonl", synthetic_preference_rows(320, seed=1))
        write_jsonl(inputs / "eval.jsonl", synthetic_preference_rows(64, seed=2))
        cfg.data.train, cfg.data.eval = [str(inputs / "train.jsonl")], [str(inputs / "eval.jsonl")]
    final = runner.train(cfg)
    rows = read_jsonl(RunFolder(out).metrics)
    evals = [r for r in rows if "eval/loss" in r]
    print("\nheld-out pairs        step   loss    accuracy  margin")
    for r in evals:
        print(
            f"{'':20}{r['step']:6d}  {r['eval/loss']:.4f}  {r['eval/rewards/accuracies']:8.3f}  {r['eval/rewards/margins']:.4f}"
        )
    print(f"\nmetrics: {out / 'metrics.jsonl'}\nmodel:   {final}")
    return 0
