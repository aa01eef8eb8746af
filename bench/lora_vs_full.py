"""Peak memory, step time and checkpoint size: LoRA (reference = adapters off) vs full fine-tuning with a
separate reference copy, on the same random-init ~34M-parameter Llama and the same synthetic data.

    PYTHONPATH=src python bench/lora_vs_full.py [--hidden 512 --layers 8 --steps 8]

Each variant runs in its own process, so ru_maxrss is that run's peak alone. CPU, float32.
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


def _workspace(root: Path, hidden: int, layers: int) -> dict[str, str]:
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
    params = sum(p.numel() for p in model.parameters())
    return {"model": str(root / "model"), "train": str(root / "train.jsonl"), "params": str(params)}


def _run_one(model: str, train: str, out: str, lora_rank: int, steps: int) -> None:
    """Child process: train ``steps`` steps with one checkpoint at the end, print one JSON line of figures."""
    from preftune import runner
    from preftune.config import load_config

    cfg = load_config(None, {
        "output_dir": out, "model.name_or_path": model, "data.train": train, "data.max_len": 64,
        "train.micro_batch_size": 8, "train.batch_size": 8, "train.max_steps": steps, "ckpt.save_steps": steps,
        "log.progress": False, "lora.rank": lora_rank, "optim.lr": 1e-4,
    })  # fmt: skip
    trainer, per_epoch = runner.build_trainer(cfg, log=lambda *_: None)
    stamps: list[float] = []
    real_step = trainer.strategy.optimizer_step

    def timed_step(*args):
        result = real_step(*args)
        stamps.append(time.perf_counter())
        return result

    trainer.strategy.optimizer_step = timed_step  # type: ignore[method-assign]
    start = time.perf_counter()
    trainer.fit(cfg, 0, per_epoch)
    gaps = [b - a for a, b in zip([start, *stamps], stamps, strict=False)][1:]  # the first step warms up
    ckpt = next(Path(out, "checkpoints").iterdir())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    print(json.dumps({
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_s": statistics.median(gaps),
        "ckpt_mib": sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file()) / 2**20,
        "trainable": trainable,
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--child", nargs=4)
    args = parser.parse_args()
    if args.child:
        model, train, out, rank = args.child
        _run_one(model, train, out, int(rank), args.steps)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws = _workspace(root, args.hidden, args.layers)
        print(f"model: {int(ws['params']) / 1e6:.1f}M parameters, {args.steps} steps of 8 pairs, float32 CPU")
        for name, rank in (("full + reference copy", 0), (f"LoRA r={args.rank}", args.rank)):
            cmd = [sys.executable, __file__, "--steps", str(args.steps), "--child",
                   ws["model"], ws["train"], str(root / f"out{rank}"), str(rank)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{name:>22}: peak RSS {r['peak_rss_mib']:7.0f} MiB, step {r['step_s']:.3f} s, "
                f"checkpoint {r['ckpt_mib']:7.1f} MiB, trainable {r['trainable'] / 1e6:.2f}M"
            )


if __name__ == "__main__":
    main()
