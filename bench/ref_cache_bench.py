"""Reference cache figures: hash speed, and step time / peak RSS of a short run with and without the cache.

    python bench/ref_cache_bench.py hash                       # toy, ~30M and ~135M Llama weight hashes
    python bench/ref_cache_bench.py train --mode live  --root /tmp/rcb   # one run per process: ru_maxrss is
    python bench/ref_cache_bench.py train --mode cache --root /tmp/rcb   # a process's peak, so run each mode
    python bench/ref_cache_bench.py train --mode cache --root /tmp/rcb   # in its own process (2nd: reuses)

Step time is each logged step's tokens / tokens_per_s (logging every step, no evaluation until the last step).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch

from preftune.config import load_config
from preftune.io import read_jsonl, write_jsonl
from preftune.reference.cache import reference_fingerprint
from preftune.toy import build_toy_model, build_toy_tokenizer, synthetic_preference_rows, toy_corpus
from preftune.training import runner

MODELS = {  # name: (vocab, hidden, layers, intermediate, tied)
    "toy": (436, 64, 2, 128, False),
    "llama-30m": (16000, 512, 8, 1024, False),
    "llama-135m": (49152, 576, 30, 1536, True),  # SmolLM-135M's shape
}


def _model(name: str) -> torch.nn.Module:
    vocab, hidden, layers, inter, tied = MODELS[name]
    return build_toy_model(
        vocab, hidden_size=hidden, num_layers=layers, intermediate_size=inter, tie_word_embeddings=tied
    )


def bench_hash() -> None:
    for name in MODELS:
        model = _model(name)
        params = sum(p.numel() for p in model.parameters())
        unique = {t.data_ptr(): t for t in model.state_dict().values()}  # tied tensors are hashed once
        nbytes = sum(t.numel() * t.element_size() for t in unique.values())
        times = []
        for _ in range(3):
            start = time.perf_counter()
            reference_fingerprint(model)
            times.append(time.perf_counter() - start)
        best = min(times)
        print(f"{name}: {params / 1e6:.1f}M params, {nbytes / 2**20:.0f} MiB hashed, "
              f"{best * 1000:.1f} ms best of 3 (median {statistics.median(times) * 1000:.1f} ms), "
              f"{nbytes / 2**20 / best:.0f} MiB/s")  # fmt: skip


def bench_train(mode: str, root: Path, steps: int) -> None:
    model_dir = root / "model"
    if not model_dir.is_dir():
        tokenizer = build_toy_tokenizer(toy_corpus())
        _model("llama-30m").save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    # Written every time: one epoch of exactly `steps` batches, whatever an earlier call's --steps was.
    write_jsonl(root / "train.jsonl", synthetic_preference_rows(8 * steps, seed=1))
    out = root / f"run-{mode}-{time.time_ns()}"
    cfg = load_config(None, {
        "output_dir": str(out), "model.name_or_path": str(model_dir), "data.train": str(root / "train.jsonl"),
        "data.max_len": 64, "train.micro_batch_size": 4, "train.batch_size": 8, "train.max_steps": steps,
        "optim.lr": 1e-4, "log.progress": False, "ckpt.disable": True,
        "ref.precompute": mode == "cache", "ref.cache_dir": str(root / "cache"),
    })  # fmt: skip
    lines: list[str] = []
    start = time.perf_counter()
    runner.train(cfg, log=lines.append)
    total = time.perf_counter() - start
    rows = read_jsonl(out / "metrics.jsonl")
    step_s = [r["tokens"] / r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    said = [line for line in lines if line.startswith("reference log-probs")]
    print(json.dumps({
        "mode": mode, "steps": len(step_s), "median_step_s": statistics.median(step_s[1:]),
        "total_s": total, "peak_rss_mib": peak, "log": said,
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["hash", "train"])
    parser.add_argument("--mode", choices=["live", "cache"], default="live")
    parser.add_argument("--root", type=Path, default=Path("/tmp/ref_cache_bench"))
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    if args.what == "hash":
        bench_hash()
    else:
        args.root.mkdir(parents=True, exist_ok=True)
        bench_train(args.mode, args.root, args.steps)


if __name__ == "__main__":
    main()
