"""Peak memory, step time and checkpoint size: LoRA (reference = adapters off) vs full fine-tuning with a
separate reference copy, on the same random-init ~34M-parameter Llama and the same synthetic data.

    PYTHONPATH=src python bench/lora_vs_full.py [--hidden 512 --layers 8 --steps 8]

Peak RSS and checkpoint size: each variant trains in its own process, so ru_maxrss is that run's peak alone.
Step time: both variants in one process, steps interleaved on one thread, median, so that load from other
processes on a shared machine falls on both alike. CPU, float32.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _workspace(root: Path, hidden: int, layers: int) -> None:
    from preftune.toy import build_toy_model, build_toy_tokenizer, synthetic_preference_rows, toy_corpus

    tokenizer = build_toy_tokenizer(toy_corpus())
    model = build_toy_model(
        len(tokenizer), hidden_size=hidden, num_layers=layers, intermediate_size=4 * hidden,
        num_attention_heads=8, num_key_value_heads=8,
    )  # fmt: skip
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rows = synthetic_preference_rows(256, seed=1)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _config(model: str, train: str, out: str, lora_rank: int, steps: int) -> Any:
    from preftune.config import load_config

    return load_config(None, {
        "output_dir": out, "model.name_or_path": model, "data.train": train, "data.max_len": 64,
        "train.micro_batch_size": 8, "train.batch_size": 8, "train.max_steps": steps, "ckpt.save_steps": steps,
        "log.progress": False, "lora.rank": lora_rank, "optim.lr": 1e-4,
    })  # fmt: skip


def _run_one(model: str, train: str, out: str, lora_rank: int, steps: int) -> None:
    """Child process: train ``steps`` steps with one checkpoint at the end, print one JSON line of figures."""
    from preftune.training import runner

    cfg = _config(model, train, out, lora_rank, steps)
    start_mib = _peak_rss_mib()
    trainer, per_epoch = runner.build_trainer(cfg, log=lambda *_: None)
    trainer.fit(cfg, 0, per_epoch)
    ckpt = next(Path(out, "checkpoints").iterdir())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    print(json.dumps({
        "peak_rss_mib": _peak_rss_mib(), "start_mib": start_mib,
        "ckpt_mib": sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file()) / 2**20,
        "trainable": trainable,
    }))  # fmt: skip


def _interleaved_step_times(ws: dict[str, str], root: Path, ranks: list[int], steps: int) -> list[float]:
    """Median seconds per optimizer step (forward, reference, backward, AdamW) of each variant."""
    import torch

    from preftune.training import runner

    torch.set_num_threads(1)
    trainers = []
    for rank in ranks:
        trainer, _ = runner.build_trainer(
            _config(ws["model"], ws["train"], str(root / f"t{rank}"), rank, steps), log=lambda *_: None
        )
        trainer.scorer.train()
        trainers.append(trainer)
    batch = next(iter(trainers[0].train_dataloader))
    times: list[list[float]] = [[] for _ in ranks]
    for _ in range(steps):
        for trainer, spent in zip(trainers, times, strict=True):
            start = time.perf_counter()
            trainer.train_step([batch])
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent[1:]) for spent in times]  # the first step warms up


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--child", nargs=4)
    parser.add_argument("--workspace")
    args = parser.parse_args()
    if args.child:
        model, train, out, rank = args.child
        _run_one(model, train, out, int(rank), args.steps)
        return
    if args.workspace:
        _workspace(Path(args.workspace), args.hidden, args.layers)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Linux keeps ru_maxrss across fork + exec, so this process stays small until the measured runs are done:
        # the model is built in a child, and the step timing (which holds both variants) comes last.
        me = [sys.executable, __file__, "--hidden", str(args.hidden), "--layers", str(args.layers)]
        subprocess.run([*me, "--workspace", str(root)], capture_output=True, check=True)
        ws = {"model": str(root / "model"), "train": str(root / "train.jsonl")}
        variants = [("full + reference copy", 0), (f"LoRA r={args.rank}", args.rank)]
        figures = []
        for _, rank in variants:
            child = [
                *me,
                "--steps",
                str(args.steps),
                "--child",
                ws["model"],
                ws["train"],
                str(root / f"out{rank}"),
                str(rank),
            ]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            figures.append(json.loads(done.stdout.strip().splitlines()[-1]))
        params = sum(f.stat().st_size for f in (root / "model").glob("*.safetensors")) / 4
        print(f"model: {params / 1e6:.1f}M parameters, {args.steps} steps of 8 pairs, float32 CPU")
        step_s = _interleaved_step_times(ws, root, [rank for _, rank in variants], args.steps)
        for (name, _), r, seconds in zip(variants, figures, step_s, strict=True):
            print(
                f"{name:>22}: peak RSS {r['peak_rss_mib']:5.0f} MiB (after imports {r['start_mib']:4.0f}), "
                f"step {seconds:.3f} s (1 thread), "
                f"checkpoint {r['ckpt_mib']:7.1f} MiB, trainable {r['trainable'] / 1e6:.2f}M"
            )


if __name__ == "__main__":
    main()
