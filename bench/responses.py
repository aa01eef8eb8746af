"""The ``--responses K`` workload of bench/vs_trl.py: K scored responses per prompt, trained at once by preftune
and as pairs by TRL.

preftune reads one row per prompt (``{"prompt", "responses": [K], "scores": [K]}``,
``prefix_shared``: the prompt laid out once, each response scored once) and trains a pairwise sigmoid loss over
the responses' pairs (``loss.pairs``, uniform weights, averaged per prompt). TRL trains its default DPO on the
same data expanded to pair rows: every ordered pair (``all``: K(K-1)/2 per prompt) or the best response
against each other one (``best_vs_rest``: K-1). A step holds the same prompts on both sides, so both train the
same comparisons per step; with the same number of pairs per prompt, TRL's mean over pairs is preftune's mean
over prompts of the per-prompt mean, and the two losses are the same number.
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import report
import workload as wl
from worker_common import ids_digest, matches

RULES = ("all", "best_vs_rest")
# Prompts and responses of 64-128 tokens, as the pair workload; same model.
Triple = tuple[list[int], list[int], list[int]]


@dataclass(frozen=True)
class GroupFiles:
    model_dir: Path
    groups: Path  # one row per prompt
    pairs: dict[str, Path]  # rule -> the same rows expanded to pair rows


def expand(responses: list[Any], scores: list[float], rule: str) -> list[tuple[Any, Any]]:
    """(better, worse) pairs of one prompt's responses, ordered by the better one's rank, then the worse one's.

    The bench's own expansion, independent of preftune's ``loss.pairs`` code: both sides are checked against it.
    """
    order = sorted(range(len(responses)), key=lambda k: -scores[k])
    if rule == "all":
        chosen = [(a, b) for n, a in enumerate(order) for b in order[n + 1 :] if scores[a] > scores[b]]
    elif rule == "best_vs_rest":
        chosen = [(order[0], b) for b in order[1:] if scores[order[0]] > scores[b]]
    else:
        raise ValueError(f"unknown pair rule {rule!r}")
    return [(responses[a], responses[b]) for a, b in chosen]


def pairs_per_prompt(k: int, rule: str) -> int:
    return k * (k - 1) // 2 if rule == "all" else k - 1


def _group_rows(w: wl.Workload, k: int) -> list[dict[str, Any]]:
    rng = random.Random(w.seed)
    rows = []
    for _ in range(w.pairs):
        prompt = wl.random_text(rng, w, w.prompt_tokens)
        responses = [" " + wl.random_text(rng, w, w.response_tokens) for _ in range(k)]
        scores = rng.sample(range(100), k)  # distinct: no tied pair, so every expansion has its full size
        rows.append({"prompt": prompt, "responses": responses, "scores": [float(s) for s in scores]})
    return rows


def build(root: Path, w: wl.Workload, k: int) -> GroupFiles:
    """The model (the pair workload's), the group rows and their pair expansions under ``root``."""
    model_dir, _ = wl.build(root, w)
    rows = _group_rows(w, k)
    files = GroupFiles(
        model_dir, root / f"groups-k{k}.jsonl", {r: root / f"pairs-k{k}-{r}.jsonl" for r in RULES}
    )
    files.groups.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for rule, path in files.pairs.items():
        pair_rows = [
            {"prompt": row["prompt"], "chosen": chosen, "rejected": rejected}
            for row in rows
            for chosen, rejected in expand(row["responses"], row["scores"], rule)
        ]
        path.write_text("".join(json.dumps(row) + "\n" for row in pair_rows))
    return files


def expected_ids(files: GroupFiles, rule: str, prompts: int) -> list[Triple]:
    """The (prompt, chosen, rejected) ids of the first ``prompts`` prompts' pairs, as the pair workload counts them."""
    return wl.expected_ids(files.model_dir, files.pairs[rule], prompts * _rows_per_prompt(files, rule))


def _rows_per_prompt(files: GroupFiles, rule: str) -> int:
    first = json.loads(files.groups.read_text().splitlines()[0])
    return pairs_per_prompt(len(first["responses"]), rule)


def group_tokens(files: GroupFiles, prompts: int) -> list[int]:
    """Tokens preftune lays out per prompt: the prompt once, then each response (BOS and EOS included)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(files.model_dir)
    rows = [json.loads(line) for line in files.groups.read_text().splitlines()[:prompts]]
    return [
        len(tok(row["prompt"])["input_ids"])
        + sum(len(tok(r, add_special_tokens=False)["input_ids"]) + 1 for r in row["responses"])
        for row in rows
    ]


def configs(config_cls: Any, files: GroupFiles, prompts: int, k: int, with_cache: bool) -> list[Any]:
    """A B A B: per rule, TRL's default on the expanded pairs, then preftune on the groups; then, when this
    preftune caches group references, both sides with their reference precomputed."""
    out = []
    for rule in RULES:
        batch = prompts * pairs_per_prompt(k, rule)
        out.append(
            config_cls(f"trl-{rule}", "trl", {"fast": False, "data": str(files.pairs[rule]), "batch": batch})
        )
        out.append(config_cls(f"preftune-{rule}", "preftune", _preftune_spec(files, rule, prompts)))
    if with_cache:
        batch = prompts * pairs_per_prompt(k, "all")
        out.append(
            config_cls(
                "trl-all-fastest", "trl", {"fast": True, "data": str(files.pairs["all"]), "batch": batch}
            )
        )
        out.append(
            config_cls(
                "preftune-all+cache", "preftune", {**_preftune_spec(files, "all", prompts), "ref_cache": True}
            )
        )
    return out


def _preftune_spec(files: GroupFiles, rule: str, prompts: int) -> dict[str, Any]:
    return {
        "layout": "prefix_shared",
        "groups": True,
        "pairs": rule,
        "data": str(files.groups),
        "batch": prompts,
    }


def rule_of(name: str) -> str:
    return "best_vs_rest" if "best_vs_rest" in name else "all"


def table(configs: list[Any], prompt_tokens: list[int], expected: dict[str, list[Triple]], steps: int) -> str:
    """Per configuration: step time, the time to train the run's comparisons, comparisons/s, its own tokens/s,
    peak RSS; and each preftune run against TRL's default run on the same rule."""
    per_step = len(prompt_tokens) // steps
    step_s = {c.name: statistics.median(r["median_step_s"] for r in c.results) for c in configs}
    rss = {c.name: statistics.median(r["peak_rss_mib"] for r in c.results) for c in configs}
    lines = [
        "",
        "| config | rows/step | comparisons/step | median step s | time for all comparisons s | comparisons/s "
        "| tokens/s (own layout) | CPU s/step | peak RSS MiB | speed vs TRL (same rule) | RSS vs TRL | runs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in configs:
        rule = rule_of(c.name)
        comparisons = len(expected[rule]) // steps
        tokens = (
            sum(prompt_tokens) if c.side == "preftune" else ids_digest(expected[rule])["tokens"]
        ) / steps
        peer = f"trl-{rule}" + ("-fastest" if "cache" in c.name else "")
        cpu = statistics.median(statistics.median(r["step_cpu_s"]) for r in c.results)
        vs = report._ratio(step_s.get(peer), step_s[c.name]) if c.side == "preftune" else "-"
        rss_vs = report._ratio(rss[c.name], rss.get(peer)) if c.side == "preftune" else "-"
        rows = per_step if c.side == "preftune" else comparisons
        lines.append(
            f"| {c.name} | {rows} | {comparisons} | {step_s[c.name]:.2f} | {steps * step_s[c.name]:.1f} "
            f"| {comparisons / step_s[c.name]:.1f} | {tokens / step_s[c.name]:.0f} | {cpu:.2f} | {rss[c.name]:.0f} "
            f"| {vs} | {rss_vs} | {len(c.results)} |"
        )
    lines += [
        "",
        "comparisons: (better, worse) response pairs trained per step, the same on both sides of a rule. time for "
        "all comparisons: steps x median step (steady state, steps 2..N). speed vs TRL: TRL's median step over "
        "preftune's on the same prompts and pairs (preftune-X+cache against trl-X-fastest, whose reference is "
        "precomputed too). tokens/s: each side's own non-pad tokens (TRL: prompt+chosen and prompt+rejected of "
        "every pair; preftune: each prompt once plus its K responses) over the step time.",
    ]
    return "\n".join(lines)


_LOSS_KEYS = ("loss", "rewards/chosen", "rewards/rejected")
_LOGPS_KEYS = ("logps/chosen", "logps/rejected")


def checks(configs: list[Any], expected: dict[str, list[Triple]], threads: int) -> bool:
    """Each run trained on its rule's ids; preftune's first two steps agree with TRL's default run on the same
    rule (step 1: loss/rewards 1e-4 absolute, summed log-probs 1e-5 relative; step 2, after one update: 1e-4)."""
    ok = True
    print("\nchecks (each preftune run against the first run of TRL's default on its rule):")
    for c in configs:
        rule = rule_of(c.name)
        digest = ids_digest(expected[rule])
        peer = next((p for p in configs if p.name == f"trl-{rule}"), None)
        problems: list[str] = []
        worst = [0.0, 0.0, 0.0]  # step-1 loss/rewards, step-1 log-probs (relative), step-2 loss/rewards
        for r in c.results:
            if (r["tokens"], r["ids_sha256"]) != (digest["tokens"], digest["ids_sha256"]):
                problems.append(f"trained on other token ids ({r['tokens']} tokens vs {digest['tokens']})")
            if not r.get("allocator_settings") or r.get("threads") != threads:
                problems.append("process settings differ")
            if peer is None or not peer.results or c.side == "trl":
                continue
            for step, (mine, theirs) in enumerate(
                zip(r["first_steps"], peer.results[0]["first_steps"], strict=False)
            ):
                diff = max(abs(mine[key] - theirs[key]) for key in _LOSS_KEYS)
                if step == 0:
                    rel = max(abs(mine[key] - theirs[key]) / abs(theirs[key]) for key in _LOGPS_KEYS)
                    worst[0], worst[1] = max(worst[0], diff), max(worst[1], rel)
                else:
                    worst[2] = max(worst[2], diff)
        for value, bound, what in (
            (worst[0], report.LOSS_ATOL, "step-1 loss/rewards"),
            (worst[1], report.LOGPS_RTOL, "step-1 log-probs (relative)"),
            (worst[2], report.LOSS_ATOL, "step-2 loss/rewards"),
        ):
            if value > bound:
                problems.append(f"{what} differ by {value:.2e} > {bound:g}")
        ok &= not problems
        status = "FAIL: " + "; ".join(sorted(set(problems))) if problems else "ok"
        detail = (
            f" (step 1: loss/rewards max |diff| {worst[0]:.1e}, log-probs max rel diff {worst[1]:.1e}; "
            f"step 2: loss/rewards max |diff| {worst[2]:.1e})"
            if c.side == "preftune"
            else ""
        )
        print(f"  {c.name}: {status}{detail}")
    return ok


def targets(configs: list[Any]) -> str:
    """The issue's targets beside what this run measured (medians)."""
    by = {c.name: c for c in configs if c.results}

    def med(name: str, key: str) -> float | None:
        return statistics.median(r[key] for r in by[name].results) if name in by else None

    lines = ["", "targets (2-core CPU, float32, quiet machine):"]
    for rule, target in (("all", 4.0), ("best_vs_rest", 2.5)):
        trl, ours = med(f"trl-{rule}", "median_step_s"), med(f"preftune-{rule}", "median_step_s")
        if trl and ours:
            lines.append(f"  {rule}: preftune {trl / ours:.2f}x TRL's speed (target >= {target:g}x)")
    for rule in RULES:
        trl, ours = med(f"trl-{rule}", "peak_rss_mib"), med(f"preftune-{rule}", "peak_rss_mib")
        if trl and ours:
            lines.append(f"  {rule}: preftune peak RSS {ours / trl:.2f}x TRL's (target <= 0.5x)")
    return "\n".join(lines)


def run(args: Any, config_cls: Any, run_worker: Any) -> int:
    """bench/vs_trl.py --responses K: build, run every configuration ``args.repeats`` times, print the table."""
    import sys
    import time

    from preftune.config import config_keys

    k, steps = args.responses, args.steps or (3 if args.quick else 10)
    prompts = args.batch
    base = wl.QUICK if args.quick else wl.FULL
    work = dataclasses.replace(base, pairs=steps * prompts)
    root = args.workdir / (f"quick-k{k}" if args.quick else f"full-k{k}")
    files = build(root, work, k)
    expected = {rule: expected_ids(files, rule, steps * prompts) for rule in RULES}
    prompt_tokens = group_tokens(files, steps * prompts)
    all_configs = configs(config_cls, files, prompts, k, "ref.precompute" in config_keys())
    filters = [f.strip() for f in args.configs.split(",") if f.strip()]
    names = {c.name for c in all_configs}
    chosen = [c for c in all_configs if matches(c.name, filters, names)]
    spec = {"model_dir": str(files.model_dir), "steps": steps, "lr": args.lr, "beta": args.beta, "seed": 0,
            "max_len": work.max_len, "threads": args.threads}  # fmt: skip
    # The pair benchmark's header, less its pair-data line: this workload's data line says what a step holds.
    model_lines = report.header(
        work, steps, prompts, args.threads, [0], wl.parameter_counts(work)
    ).splitlines()
    print(
        "\n".join(model_lines[:2])
        + f"\ndata: prompts {work.prompt_tokens[0]}-{work.prompt_tokens[1]} tokens, K = {k} "
        f"responses of {work.response_tokens[0]}-{work.response_tokens[1]} tokens each; {steps} steps x {prompts} "
        f"prompts; {sum(prompt_tokens) / steps:.0f} tokens per step as preftune lays them out (each prompt once); TRL "
        f"trains the expanded pairs ({', '.join(f'{r}: {pairs_per_prompt(k, r)} per prompt' for r in RULES)})",
        flush=True,
    )
    for repeat in range(args.repeats):
        print(f"repeat {repeat + 1}/{args.repeats}", flush=True)
        for cfg in chosen:
            python = args.trl_python if cfg.side == "trl" else Path(sys.executable)
            start = time.perf_counter()
            result = run_worker(cfg, {**spec, **cfg.spec}, python)
            if result is not None:
                cfg.results.append(result)
                print(f"  {cfg.name}: median step {result['median_step_s']:.3f} s, peak RSS "
                      f"{result['peak_rss_mib']:.0f} MiB ({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    ran = [c for c in chosen if c.results]
    (root / "results.json").write_text(json.dumps({c.name: c.results for c in ran}, indent=1))
    print(table(ran, prompt_tokens, expected, steps))
    print(targets(ran))
    ok = checks(ran, expected, args.threads) and len(ran) == len(chosen)
    print(f"raw results: {root / 'results.json'}")
    return 0 if ok else 1
