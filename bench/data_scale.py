"""Data preparation at scale: preftune's against TRL's on the same synthetic jsonl, time and peak memory.

    /work/main/.venv/bin/python bench/data_scale.py --pairs 100000,1000000      # the issue's sizes
    /work/main/.venv/bin/python bench/data_scale.py --quick                     # 2000 pairs, a smoke test

Rows: prompts of 40-200 words, responses of 30-200, words drawn (Zipf) from 60k pseudo-words, a 32k byte-level
BPE trained on a sample of them: about 790 tokens per prompt + chosen + rejected. Each run is a fresh process
(its own peak RSS): preftune's first run, its second run on the same files, a 2-process torchrun start (every
process prepares its data), and TRL 1.16 constructing its DPOTrainer on the same file with ``dataset_num_proc``
at its default and at 2 (each with a fresh datasets cache). Prints prepare time, peak RSS, the RSS still held
for the data, and the ratios. See bench/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "src"))

from worker_common import RESULT_PREFIX, THREADS, matches  # noqa: E402

TRL_PYTHON = BENCH / ".venv-trl" / "bin" / "python"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _vocabulary(rng: random.Random, size: int = 60_000) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 10))))
    return sorted(words)


def write_rows(path: Path, pairs: int, seed: int = 0) -> None:
    """``pairs`` jsonl rows, written in blocks so memory stays flat whatever the size."""
    rng = random.Random(seed)
    words = _vocabulary(rng)
    # Zipf: a few words common, most rare. Cumulative once: choices() would re-add 60k weights every call,
    # and with them it draws exactly what it draws from the weights.
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(words))))

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choices(words, cum_weights=cumulative, k=rng.randint(lo, hi)))

    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        for _ in range(pairs):
            row = {"prompt": text(40, 200), "chosen": " " + text(30, 200), "rejected": " " + text(30, 200)}
            fh.write(json.dumps(row) + "\n")
    tmp.replace(path)


def build_assets(root: Path, pairs: list[int], vocab: int = 32_000) -> tuple[Path, dict[int, Path]]:
    """A tokenizer + tiny model folder (TRL needs a model to construct its trainer) and one jsonl per size."""
    root.mkdir(parents=True, exist_ok=True)
    model = root / "model"
    if not (model / "tokenizer.json").is_file():
        sample = root / "sample.jsonl"
        write_rows(sample, min(20_000, vocab), seed=99)  # enough text for the BPE to reach its vocabulary
        texts = [v for line in sample.read_text().splitlines() for v in json.loads(line).values()]
        from preftune.toy import build_toy_model, build_toy_tokenizer

        tokenizer = build_toy_tokenizer(texts, vocab_size=vocab)
        build_toy_model(len(tokenizer), hidden_size=32, num_layers=1).save_pretrained(model)
        tokenizer.save_pretrained(model)
    data = {}
    for n in pairs:
        data[n] = root / f"pairs-{n}.jsonl"
        if not data[n].is_file():
            print(f"writing {n} rows to {data[n]}", flush=True)
            write_rows(data[n], n)
    return model, data


def run(cmd: list[str], spec: dict[str, Any], env: dict[str, str]) -> list[dict[str, Any]]:
    """The result lines of one run (one per process), each with the run's wall time; [] when it failed."""
    import time

    start = time.perf_counter()
    proc = subprocess.run([*cmd, json.dumps(spec)], capture_output=True, text=True, env=env, cwd=BENCH)
    wall = time.perf_counter() - start
    lines = [
        json.loads(ln[len(RESULT_PREFIX) :])
        for ln in proc.stdout.splitlines()
        if ln.startswith(RESULT_PREFIX)
    ]
    if proc.returncode != 0 or not lines:
        print("\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:]), flush=True)
        return []
    return [{**line, "wall_s": wall} for line in lines]


def configs(trl_python: Path) -> list[tuple[str, list[str], dict[str, Any]]]:
    py, worker = [sys.executable, str(BENCH / "worker_data.py")], str(BENCH / "worker_data.py")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        worker,
    ]
    return [
        ("preftune", py, {"side": "preftune"}),
        ("preftune-rerun", py, {"side": "preftune"}),
        ("preftune-torchrun2", torchrun, {"side": "preftune"}),
        ("trl-num_proc-default", [str(trl_python), worker], {"side": "trl", "num_proc": None}),
        ("trl-num_proc-2", [str(trl_python), worker], {"side": "trl", "num_proc": 2}),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", default="100000", help="comma-separated dataset sizes")
    p.add_argument("--quick", action="store_true", help="2000 pairs and a 2k-token BPE: a smoke test")
    p.add_argument(
        "--configs", default="", help="comma-separated name filters, e.g. 'preftune,trl-num_proc-2'"
    )
    p.add_argument("--max-len", type=int, default=1024, help="data.max_len / TRL max_length (TRL's default)")
    p.add_argument("--workdir", type=Path, default=BENCH / ".work" / "data")
    p.add_argument("--trl-python", type=Path, default=TRL_PYTHON)
    args = p.parse_args(argv)
    sizes = [2000] if args.quick else [int(n) for n in args.pairs.split(",")]
    filters = [f.strip() for f in args.configs.split(",") if f.strip()]
    every = configs(args.trl_python)
    chosen = [c for c in every if matches(c[0], filters, {name for name, _, _ in every})]
    # --quick: a 2k-token BPE in its own folder, so the smoke test does not train the 32k one.
    root = args.workdir / "quick" if args.quick else args.workdir
    model, data = build_assets(root, sizes, vocab=2000 if args.quick else 32_000)
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), PYTHONHASHSEED="0",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))  # fmt: skip
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for n in sizes:
        # One store folder per size: the rerun finds the first run's store; torchrun builds its own.
        with tempfile.TemporaryDirectory(prefix="bench-data-stores-", dir=args.workdir) as stores:
            for name, cmd, extra in chosen:
                with tempfile.TemporaryDirectory(prefix="bench-data-") as out:
                    cache = Path(stores) / ("torchrun" if "torchrun" in name else "runs")
                    spec = {**extra, "data": str(data[n]), "tokenizer": str(model), "model": str(model),
                            "max_len": args.max_len, "output_dir": out, "cache_dir": str(cache)}  # fmt: skip
                    lines = run(cmd, spec, env)
                results[(name, n)] = lines
                if lines:
                    print(f"  {n} pairs, {name}: {_describe(lines)}", flush=True)
    print(table(results, sizes))
    (root / "results.json").write_text(
        json.dumps({f"{k[0]}@{k[1]}": v for k, v in results.items()}, indent=1)
    )
    return 0 if all(results.values()) else 1


def _describe(lines: list[dict[str, Any]]) -> str:
    worst = max(lines, key=lambda r: r["peak_rss_mib"])
    extra = ""
    if "first_batch_s" in worst:
        extra = (f", first batch at {max(r['first_batch_s'] for r in lines):.1f} s, build workers' peak RSS "
                 f"{worst['build_workers_peak_rss_mib']:.0f} MiB, store {worst['store_mib']:.0f} MiB, "
                 f"{'reused' if worst['reused'] else 'built'}")  # fmt: skip
    return (f"{worst['prepare_s']:.1f} s to prepare, {worst['wall_s']:.1f} s wall, peak RSS "
            f"{worst['peak_rss_mib']:.0f} MiB, held {worst['held_mib']:.0f} MiB, {worst['rows']} rows{extra}"
            + (f" (x{len(lines)} processes)" if len(lines) > 1 else ""))  # fmt: skip


def table(results: dict[tuple[str, int], list[dict[str, Any]]], sizes: list[int]) -> str:
    lines = ["", "| pairs | run | prepare s | first batch s | process wall s | peak RSS MiB (per process) "
             "| workers' peak RSS MiB | held for data MiB | prepare vs TRL default | peak RSS vs TRL default |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for n in sizes:
        peer = results.get(("trl-num_proc-default", n)) or []
        peer_s = max((r["prepare_s"] for r in peer), default=None)
        peer_rss = max((r["peak_rss_mib"] for r in peer), default=None)
        for (name, size), runs in results.items():
            if size != n or not runs:
                continue
            prep = max(r["prepare_s"] for r in runs)
            first = f"{max(r['first_batch_s'] for r in runs):.1f}" if "first_batch_s" in runs[0] else "-"
            workers = max((r.get("build_workers_peak_rss_mib", 0.0) for r in runs), default=0.0)
            rss = max(r["peak_rss_mib"] for r in runs)
            held = statistics.median(r["held_mib"] for r in runs)
            vs = f"{peer_s / prep:.2f}x faster" if peer_s and not name.startswith("trl") else "-"
            vs_rss = f"{rss / peer_rss:.2f}x" if peer_rss and not name.startswith("trl") else "-"
            wall = max(r["wall_s"] for r in runs)
            lines.append(f"| {n} | {name} | {prep:.1f} | {first} | {wall:.1f} | {rss:.0f} | "
                         f"{workers:.0f} | {held:.0f} | {vs} | {vs_rss} |")  # fmt: skip
    lines += ["", "prepare s: from the start of reading the data to the rows ready (preftune: train's data step, the "
              "store built or reused; TRL: load_dataset + DPOTrainer construction, which tokenises); the slowest "
              "process under torchrun. first batch s: prepare plus reading the first global batch's rows. "
              "workers' peak RSS: the largest build worker (forked, so it shares the main process's pages). "
              "held for data: anonymous RSS after preparation minus before it (preftune's store pages are "
              "file-backed page cache, shared by every process mapping them)."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
