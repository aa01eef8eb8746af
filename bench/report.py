"""Turning worker results into the benchmark's table and its agreement checks (medians over runs)."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
from typing import Any

LOSS_ATOL = 1e-4  # first-step loss and rewards, both sides (the bound)
LOGPS_RTOL = 1e-5  # first-step summed log-probs: same ids and the same model give the same numbers

MFU_DEFINITION = (
    "MFU = useful FLOPs per second / matmul peak. Useful FLOPs per step, over non-pad tokens only: policy "
    "forward+backward 3 x (2 x decoder params x tokens + 2 x layers x L^2 x hidden per sequence + 2 x hidden x "
    "vocab x response tokens) plus, when the reference runs in the step, its forward (1 x the same); a "
    "precomputed reference is not counted in the step. Peak: median float32 2048x2048 matmul GFLOP/s on the "
    "runs' threads, measured by each run's worker right after its steps (same process, same machine load)."
)


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def header(
    work: Any, steps: int, batch: int, threads: int, step_tokens: list[int], params: dict[str, int]
) -> str:
    import torch
    import transformers

    return "\n".join(
        [
            f"date {datetime.date.today()}, {_cpu_model()}, {len(os.sched_getaffinity(0))} CPUs "
            f"visible, {threads} threads per run; torch {torch.__version__}, transformers {transformers.__version__}",
            f"model: Llama hidden {work.hidden}, {work.layers} layers, intermediate {work.intermediate}, "
            f"{work.heads} heads, vocab {work.vocab}: {params['total'] / 1e6:.1f}M parameters "
            f"({params['decoder'] / 1e6:.1f}M decoder, {params['embeddings'] / 1e6:.1f}M embeddings, "
            f"{params['lm_head'] / 1e6:.1f}M LM head), float32",
            f"data: prompts {work.prompt_tokens[0]}-{work.prompt_tokens[1]} tokens, responses "
            f"{work.response_tokens[0]}-{work.response_tokens[1]} tokens; {steps} steps x {batch} pairs; "
            f"{statistics.mean(step_tokens):.0f} non-pad tokens per step on average (prompt+chosen and "
            "prompt+rejected)",
        ]
    )


def _per_step(result: dict[str, Any], values: list[float]) -> list[float]:
    """values[k] / time of step k, for the steps after the first (the first holds one-off costs)."""
    return [values[k + 1] / s for k, s in enumerate(result["step_s"])]


def steady_tokens_per_s(results: list[dict[str, Any]], step_tokens: list[int]) -> float:
    return statistics.median(
        statistics.median(_per_step(r, [float(t) for t in step_tokens])) for r in results
    )


def _uses_precompute(result: dict[str, Any]) -> bool:
    return bool(result.get("ref_cache") or (result.get("effective") or {}).get("precompute_ref_logps"))


def _mfu(results: list[dict[str, Any]], flops: list[tuple[float, float]]) -> float:
    runs = []
    for r in results:
        needed = [policy + (0.0 if _uses_precompute(r) else ref) for policy, ref in flops]
        runs.append(statistics.median(_per_step(r, needed)) / (r["matmul_peak_gflops"] * 1e9))
    return statistics.median(runs)


def _with_precompute(cfg: Any, by_name: dict[str, Any], step_tokens: list[int]) -> float | None:
    """Tokens/s over the whole run counting the precompute pass, timed as the extra set-up over the same
    configuration without it (median set-up times); None when there is no such pass or no base was run."""
    results = cfg.results
    if not _uses_precompute(results[0]):
        return None
    base_name = cfg.base or f"preftune-{results[0].get('layout_run')}"
    base = by_name.get(base_name)
    if base is None or not base.results:
        return None
    extra = statistics.median(r["setup_s"] for r in results) - statistics.median(
        r["setup_s"] for r in base.results
    )
    runs = [sum(step_tokens) / (max(extra, 0.0) + r["median_step_s"] + sum(r["step_s"])) for r in results]
    return statistics.median(runs)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def table(configs: list[Any], step_tokens: list[int], flops: list[tuple[float, float]]) -> str:
    by_name = {c.name: c for c in configs}
    speed = {c.name: steady_tokens_per_s(c.results, step_tokens) for c in configs}
    rss = {c.name: statistics.median(r["peak_rss_mib"] for r in c.results) for c in configs}
    default, fastest = speed.get("trl-default"), speed.get("trl-fastest")
    lines = [
        "",
        "| config | tokens/s (steady) | vs TRL default | vs TRL fastest | tokens/s incl. precompute | "
        "first step done s | CPU s/step | peak RSS MiB | RSS vs TRL default | MFU | runs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in configs:
        name = (
            c.name if c.name != "preftune-fastest+cache" else f"preftune-{c.results[0]['layout_run']}+cache"
        )
        with_pre = _with_precompute(c, by_name, step_tokens)
        first = statistics.median(r["first_step_end_s"] for r in c.results)
        cpu = statistics.median(statistics.median(r["step_cpu_s"]) for r in c.results)
        lines.append(
            f"| {name} | {speed[c.name]:.0f} | {_ratio(speed[c.name], default)} | {_ratio(speed[c.name], fastest)} "
            f"| {f'{with_pre:.0f}' if with_pre is not None else '-'} | {first:.1f} | {cpu:.1f} "
            f"| {rss[c.name]:.0f} | {_ratio(rss[c.name], rss.get('trl-default'))} | {_mfu(c.results, flops):.1%} "
            f"| {len(c.results)} |"
        )
    lines += [
        "",
        "matmul peak GFLOP/s per run: "
        + ", ".join(
            f"{c.name} {statistics.median(r['matmul_peak_gflops'] for r in c.results):.0f}" for c in configs
        ),
        "tokens/s (steady): per step, non-pad prompt+chosen and prompt+rejected tokens (counted once from the "
        "dataset, the same for both sides) / step wall time, median over steps 2..N, then over runs.",
        "tokens/s incl. precompute: all steps' tokens / (precompute pass + all steps); the pass is timed as "
        "the extra set-up over the same configuration without it (set-up = end of the first step - one median "
        "step). first step done s: from the worker's start (model loading, tokenisation, any precompute pass) to "
        "the end of its first step. CPU s/step: the worker's CPU seconds per step (median), a cross-check "
        "less sensitive to a shared machine than wall time.",
        MFU_DEFINITION,
        *_trl_notes(configs),
    ]
    return "\n".join(lines)


def _trl_notes(configs: list[Any]) -> list[str]:
    """Which of TRL's fast options this TRL has, and which it actually used (it may accept and ignore one)."""
    notes = []
    for c in configs:
        r = c.results[0]
        if c.side != "trl" or not r.get("fast_options_requested"):
            continue
        effective = ", ".join(f"{k}={v}" for k, v in sorted(r["effective"].items()))
        missing = ", ".join(r["fast_options_missing"]) or "none"
        timed = statistics.median(run["precompute_timed_s"] for run in c.results)
        notes.append(
            f"{c.name} (TRL {r['versions']['trl']}): passed {', '.join(r['fast_options_requested'])}; "
            f"not options of this TRL: {missing}; in effect: {effective}; its precompute pass timed directly: "
            f"{timed:.1f} s"
        )
    return notes


def checks(configs: list[Any], expected: list[tuple[list[int], list[int], list[int]]], threads: int) -> bool:
    """Same ids on both sides, same first-step loss/rewards/log-probs, same process settings; prints each."""
    from worker_common import ids_digest

    digest = ids_digest(expected)
    tokens = digest["tokens"]
    ref_cfg = next((c for c in configs if c.name == "trl-default"), configs[0])
    ref = ref_cfg.results[0]["first_steps"]
    ok = True
    print(f"\nchecks (reference: {ref_cfg.name}, first run):")
    for c in configs:
        problems: list[str] = []
        worst = [0.0, 0.0, 0.0]  # step 1 loss/rewards abs, step 1 logps rel, step 2 loss/rewards abs
        for r in c.results:
            if (r["tokens"], r["ids_sha256"]) != (tokens, digest["ids_sha256"]):
                problems.append(f"trained on other token ids ({r['tokens']} tokens vs {tokens})")
            if not r.get("allocator_settings") or r.get("threads") != threads:
                problems.append(
                    f"process settings differ (allocator {r.get('allocator_settings')}, threads {r.get('threads')})"
                )
            for step, (mine, theirs) in enumerate(zip(r["first_steps"], ref, strict=False)):
                abs_diff = max(
                    abs(mine[k] - theirs[k]) for k in ("loss", "rewards/chosen", "rewards/rejected")
                )
                rel = max(
                    abs(mine[k] - theirs[k]) / abs(theirs[k]) for k in ("logps/chosen", "logps/rejected")
                )
                if step == 0:
                    worst[0], worst[1] = max(worst[0], abs_diff), max(worst[1], rel)
                else:
                    worst[2] = max(worst[2], abs_diff)
        if worst[0] > LOSS_ATOL:
            problems.append(f"first-step loss/rewards differ by {worst[0]:.2e} > {LOSS_ATOL:g}")
        if worst[1] > LOGPS_RTOL:
            problems.append(f"first-step log-probs differ by {worst[1]:.2e} relative > {LOGPS_RTOL:g}")
        ok &= not problems
        status = "FAIL: " + "; ".join(sorted(set(problems))) if problems else "ok"
        print(
            f"  {c.name}: {status} (step 1: loss/rewards max |diff| {worst[0]:.1e}, log-probs max rel diff "
            f"{worst[1]:.1e}; step 2, after one update: loss/rewards max |diff| {worst[2]:.1e})"
        )
    return ok
