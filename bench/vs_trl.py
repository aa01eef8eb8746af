"""Side-by-side benchmark: preftune's DPO trainer against TRL's DPOTrainer on the same model, data and batch.

    /work/main/.venv/bin/python bench/vs_trl.py                 # full run: 20 steps x 8 pairs, 3 repeats
    /work/main/.venv/bin/python bench/vs_trl.py --quick --configs preftune   # smoke test, tiny model

Run it with preftune's venv; TRL runs in bench/.venv-trl (made by bench/setup_trl.sh on first use). Each
configuration trains in a fresh subprocess (so peak RSS is its own), configurations alternate between the two
sides, and the whole set repeats ``--repeats`` times; the table quotes medians. See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "src"))  # this checkout's preftune, whatever the venv has installed

import report  # noqa: E402
import responses  # noqa: E402
import workload as wl  # noqa: E402
from worker_common import RESULT_PREFIX, THREADS, ids_digest  # noqa: E402

TRL_PYTHON = BENCH / ".venv-trl" / "bin" / "python"


@dataclass
class BenchConfig:
    name: str
    side: str  # "trl" or "preftune"
    spec: dict[str, Any]
    base: str | None = None  # the same configuration without a precompute pass, to time that pass against
    results: list[dict[str, Any]] = field(default_factory=list)


def preftune_configs(with_cache: bool) -> list[BenchConfig]:
    from preftune.layouts import LAYOUTS  # whatever layouts this preftune has, at run time

    configs = [BenchConfig(f"preftune-{name}", "preftune", {"layout": name}) for name in LAYOUTS]
    if with_cache:
        configs.append(
            BenchConfig(
                "preftune-padded+cache",
                "preftune",
                {"layout": "padded", "ref_cache": True},
                "preftune-padded",
            )
        )
        # Resolved after this repeat's layouts ran: the fastest of them so far, with the cache.
        configs.append(BenchConfig("preftune-fastest+cache", "preftune", {"layout": None, "ref_cache": True}))
    return configs


def all_configs(with_cache: bool) -> list[BenchConfig]:
    trl = [
        BenchConfig("trl-default", "trl", {"fast": False}),
        BenchConfig("trl-fastest", "trl", {"fast": True}, base="trl-default"),
    ]
    ours = preftune_configs(with_cache)
    # A B A B ...: each TRL run sits between preftune runs, so slow drifts in machine load hit both sides.
    order: list[BenchConfig] = []
    for i in range(max(len(trl), len(ours))):
        order += trl[i : i + 1] + ours[i : i + 1]
    return order


def ensure_trl_env(python: Path) -> None:
    if python.exists():
        return
    print(f"{python} is missing: running bench/setup_trl.sh (once)", flush=True)
    subprocess.run(["bash", str(BENCH / "setup_trl.sh")], check=True)


def run_worker(cfg: BenchConfig, spec: dict[str, Any], python: Path) -> dict[str, Any] | None:
    script = BENCH / ("worker_trl.py" if cfg.side == "trl" else "worker_preftune.py")
    threads = str(spec["threads"])
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONHASHSEED="0")
    if cfg.side == "preftune":
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory(prefix=f"bench-{cfg.name}-") as out:
        spec = {**spec, "output_dir": out}
        proc = subprocess.run(
            [str(python), str(script), json.dumps(spec)], capture_output=True, text=True, env=env, cwd=BENCH
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        print(f"  {cfg.name}: FAILED (exit {proc.returncode})\n{tail}", flush=True)
        return None
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def fastest_layout(configs: list[BenchConfig], step_tokens: list[int]) -> str:
    """The fastest layout run so far without the cache; padded when none ran (e.g. ``--configs cache``)."""
    layouts = [c for c in configs if c.side == "preftune" and not c.spec.get("ref_cache") and c.results]
    if not layouts:
        return "padded"
    best = max(layouts, key=lambda c: report.steady_tokens_per_s(c.results, step_tokens))
    return str(best.spec["layout"])


def select(configs: list[BenchConfig], filters: list[str]) -> list[BenchConfig]:
    if not filters:
        return configs
    return [c for c in configs if any(f in c.name for f in filters)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="times the whole set of configurations runs (ABAB)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 20; --quick 3)")
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="pairs per step (default 8), or prompts per step with --responses (default 2); one micro-batch",
    )
    p.add_argument("--lr", type=float, default=1e-6, help="learning rate, both sides")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta, both sides")
    p.add_argument("--threads", type=int, default=THREADS, help="torch threads per run, both sides")
    p.add_argument(
        "--quick", action="store_true", help="tiny model and few steps: a smoke test, not a benchmark"
    )
    p.add_argument(
        "--configs", default="", help="comma-separated name filters, e.g. 'trl-default,preftune-packed'"
    )
    p.add_argument("--workdir", type=Path, default=BENCH / ".work", help="scratch folder for model and data")
    p.add_argument("--trl-python", type=Path, default=TRL_PYTHON, help="python of the TRL environment")
    p.add_argument(
        "--responses",
        type=int,
        default=0,
        metavar="K",
        help="the K-responses workload: K scored responses per prompt, --batch prompts per step (default 2), "
        "preftune on one row per prompt against TRL on the expanded pairs (bench/responses.py)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # 2 prompts of K = 4 responses are 12 of TRL's pairs a step, near the pair workload's 8.
    args.batch = args.batch or (2 if args.responses else 8)
    if args.responses:
        if not args.configs or "trl" in args.configs:
            ensure_trl_env(args.trl_python)
        return responses.run(args, BenchConfig, run_worker)
    from preftune.config import config_keys

    base = wl.QUICK if args.quick else wl.FULL
    steps = args.steps or (3 if args.quick else 20)
    work = dataclasses.replace(base, pairs=steps * args.batch)
    with_cache = "ref.precompute" in config_keys()
    if not with_cache:
        print("note: this preftune has no ref.precompute key: the reference-cache configurations are skipped")
    configs = select(all_configs(with_cache), [f.strip() for f in args.configs.split(",") if f.strip()])
    if not configs:
        print(f"no configuration matches --configs {args.configs!r}", file=sys.stderr)
        return 2
    if any(c.side == "trl" for c in configs):
        ensure_trl_env(args.trl_python)

    root = args.workdir / ("quick" if args.quick else "full")
    model_dir, data = wl.build(root, work)
    expected = wl.expected_ids(model_dir, data, steps * args.batch)
    pairs_by_step = [expected[i * args.batch : (i + 1) * args.batch] for i in range(steps)]
    step_tokens = [ids_digest(step)["tokens"] for step in pairs_by_step]
    flops = [wl.step_flops(work, step) for step in pairs_by_step]
    spec = {
        "model_dir": str(model_dir), "data": str(data), "steps": steps, "batch": args.batch, "lr": args.lr,
        "beta": args.beta, "seed": 0, "max_len": work.max_len, "threads": args.threads,
    }  # fmt: skip
    print(
        report.header(work, steps, args.batch, args.threads, step_tokens, wl.parameter_counts(work)),
        flush=True,
    )

    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
        for cfg in configs:
            run_spec = {**spec, **cfg.spec}
            if cfg.name == "preftune-fastest+cache":
                run_spec["layout"] = fastest_layout(configs, step_tokens)
                if run_spec["layout"] == "padded" and any(c.name == "preftune-padded+cache" for c in configs):
                    continue  # the fastest layout is padded: preftune-padded+cache already is this run
            python = args.trl_python if cfg.side == "trl" else Path(sys.executable)
            start = time.perf_counter()
            result = run_worker(cfg, run_spec, python)
            if result is None:
                continue
            result["layout_run"] = run_spec.get("layout")
            cfg.results.append(result)
            print(
                f"  {cfg.name}: median step {result['median_step_s']:.3f} s, peak RSS "
                f"{result['peak_rss_mib']:.0f} MiB, matmul peak {result['matmul_peak_gflops']:.0f} GFLOP/s "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )

    ran = [c for c in configs if c.results]
    (root / "results.json").write_text(json.dumps({c.name: c.results for c in ran}, indent=1))
    print(report.table(ran, step_tokens, flops))
    ok = report.checks(ran, expected, args.threads)
    print(f"raw results: {root / 'results.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
