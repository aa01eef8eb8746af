"""``preftune iterate``: R rounds of sample -> score -> pair -> DPO, every step leaving files a rerun resumes from.

Round r starts from the original model (r = 1) or round r-1's ``final/``; its DPO reference is that same start
(``iterate.reference round``) or always the original (``original``). What ``output_dir`` holds afterwards:

    iterate.jsonl                 one summary per finished round (the table printed at the end)
    round-<r>/sampling.json       how the samples were drawn (checked when a rerun reuses them)
    round-<r>/samples.jsonl       per prompt: prompt, K responses, their scores, whether each reached EOS
    round-<r>/pairs.jsonl         the kept pairs in the training format: prompt, chosen, rejected (+ scores); with
                                  iterate.pairing listwise, group rows: prompt, responses, scores
    round-<r>/pairs_report.json   pairs kept, prompts dropped per reason (with their indices)
    round-<r>/eval_samples.jsonl  with iterate.eval_prompts: the trained model's samples on them, scored
    round-<r>/summary.json        written last: the round is done
    round-<r>/...                 what `preftune train` writes: metrics.jsonl, checkpoints/, final/, ...

Resuming: a round with summary.json is skipped; one with final/ only needs its evaluation; one with samples only
needs pairs and training; an interrupted training resumes from its checkpoints (ckpt.resume auto).
"""

from __future__ import annotations

import copy
import gc
import statistics
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError
from ..io import read_json, read_jsonl, write_json, write_jsonl
from ..model.generation import SamplingOptions, sample_responses
from ..model.loading import load_model, load_tokenizer
from ..reference import plan_reference
from ..run_folder import RunFolder
from ..strategy.single import default_device
from ..training import runner
from ..training.builder import check_output_dir
from ..validate import validate
from .pairs import DROP_REASONS, Pair, PromptSamples, training_rows
from .records import read_prompts, round_table
from .reward import RewardFn, load_reward, score

_SEED_STREAM = 1_000_000  # sampling seeds of round r start at seed + r * this; evaluation uses stream 0
# sampling.json entries that are not iterate.* keys themselves -> the key to name when one changed
_SETTING_KEYS = {
    "policy": "model.name_or_path",
    "num_prompts": "iterate.prompts",
    "seed": "seed",
    **{key: f"data.{key}" for key in ("input_template", "apply_chat_template", "chat_template")},
}


def run_iterate(cfg: Config, log: Any = print) -> list[dict[str, Any]]:
    """Run (or resume) every round; returns the per-round summaries also written to iterate.jsonl."""
    it = cfg.iterate
    if not cfg.model.name_or_path:
        raise ConfigError("model.name_or_path: no starting policy given")
    if not it.prompts:
        raise ConfigError("iterate.prompts: no prompt file given")
    if not it.reward:
        raise ConfigError(
            "iterate.reward: no reward given (module:function, file.py:function or a model folder)"
        )
    if cfg.ref.name_or_path:
        raise ConfigError(
            "ref.name_or_path: preftune iterate sets each round's reference (see iterate.reference)"
        )
    if cfg.strategy.name != "single":
        raise ConfigError(
            f"strategy.name: preftune iterate trains in one process (single), got {cfg.strategy.name}"
        )
    if cfg.lora.rank > 0 and it.reference == "original":
        raise ConfigError(
            "iterate.reference: with lora.rank > 0 a round's reference is its starting policy with the adapters "
            "disabled; 'original' needs full fine-tuning (lora.rank 0)"
        )
    if cfg.lora.rank > 0 and cfg.lora.export == "adapter":
        raise ConfigError("lora.export: each round starts from the previous round's full model; use merged")
    validate(
        _round_config(cfg, 1, cfg.model.name_or_path)
    )  # a round's training settings fail before sampling
    out = check_output_dir(cfg.output_dir)
    prompts = read_prompts(it.prompts, it.prompt_key, "iterate.prompts")
    eval_prompts = (
        read_prompts(it.eval_prompts, it.prompt_key, "iterate.eval_prompts") if it.eval_prompts else []
    )
    reward = load_reward(it.reward, cfg.model.dtype, it.reward_batch_size)
    log(
        f"iterate: {len(prompts)} prompts x {it.samples_per_prompt} samples, {it.rounds} rounds, reward {it.reward}"
    )
    summaries = []
    for r in range(1, it.rounds + 1):
        done = out / f"round-{r}" / "summary.json"
        if done.is_file():
            log(f"round {r}: already done ({done}), skipping")
            summaries.append(read_json(done))
            continue
        summaries.append(_run_round(cfg, r, prompts, eval_prompts, reward, log))
        write_jsonl(out / "iterate.jsonl", summaries)
        if r < it.rounds:
            log(round_table(summaries))
    write_jsonl(out / "iterate.jsonl", summaries)
    log(round_table(summaries))
    return summaries


def _run_round(
    cfg: Config, r: int, prompts: list[str], eval_prompts: list[str], reward: RewardFn, log: Any
) -> dict[str, Any]:
    it = cfg.iterate
    out = Path(cfg.output_dir)
    rdir = out / f"round-{r}"
    rdir.mkdir(exist_ok=True)
    start = cfg.model.name_or_path if r == 1 else str(RunFolder(out / f"round-{r - 1}").final)
    samples = _round_samples(cfg, r, start, prompts, reward, log)
    final = RunFolder(rdir).final
    if final.is_dir():  # exported under a temporary name and renamed: if it is there, it is whole
        report = read_json(rdir / "pairs_report.json")
    else:
        pairs, dropped = training_rows(samples, it.min_score_gap, it.pairing)
        write_jsonl(rdir / "pairs.jsonl", [p.to_row() if isinstance(p, Pair) else p for p in pairs])
        report = {
            "pairs": len(pairs),
            "dropped": {reason: len(indices) for reason, indices in dropped.items()},
            "dropped_prompts": dropped,
            "reasons": {reason: DROP_REASONS[reason] for reason in dropped},
        }
        write_json(rdir / "pairs_report.json", report)
        counts = ", ".join(f"{n} {reason}" for reason, n in report["dropped"].items()) or "none"
        log(f"round {r}: {len(pairs)} pairs from {len(samples)} prompts; prompts dropped: {counts}")
        # Stopping beats shrinking the batch: a smaller batch would silently change this round's optimisation
        # (steps, noise, learning-rate schedule) relative to the others.
        if len(pairs) < cfg.train.batch_size:
            raise ConfigError(
                f"train.batch_size: round {r} kept {len(pairs)} pairs, fewer than one batch of "
                f"{cfg.train.batch_size} (dropped: {counts}; see {rdir / 'pairs_report.json'}); add prompts, "
                "raise iterate.samples_per_prompt or lower iterate.min_score_gap"
            )
        runner.train(_round_config(cfg, r, start), log)
    scores = [s for sample in samples for s in sample.scores]
    summary: dict[str, Any] = {
        "round": r,
        "policy": start,
        "reference": _reference(cfg, start),
        "model": str(final),
        "prompts": len(samples),
        "samples": len(scores),
        "reward_mean": statistics.fmean(scores),
        "reward_max": max(scores),
        "reward_min": min(scores),
        "unfinished": sum(not f for sample in samples for f in sample.finished),
        "pairs": report["pairs"],
        "dropped": report["dropped"],
    }
    if eval_prompts:
        if r == 1:
            summary["eval_reward_start"] = _eval_reward(
                cfg, start, eval_prompts, reward, rdir / "eval_start.jsonl"
            )
        summary["eval_reward_mean"] = _eval_reward(
            cfg, str(final), eval_prompts, reward, rdir / "eval_samples.jsonl"
        )
    write_json(rdir / "summary.json", summary)
    return summary


def _round_samples(
    cfg: Config, r: int, start: str, prompts: list[str], reward: RewardFn, log: Any
) -> list[PromptSamples]:
    """Round r's scored samples: read back when a previous run drew them with the same settings, else drawn."""
    it = cfg.iterate
    rdir = Path(cfg.output_dir) / f"round-{r}"
    settings = {
        "policy": start,
        "prompts": it.prompts,
        "num_prompts": len(prompts),
        "reward": it.reward,
        "samples_per_prompt": it.samples_per_prompt,
        "max_new_tokens": it.max_new_tokens,
        "temperature": it.temperature,
        "top_p": it.top_p,
        "seed": cfg.seed,
        # how the prompts were rendered: the pairs train on the context they were sampled in
        "input_template": cfg.data.input_template,
        "apply_chat_template": cfg.data.apply_chat_template,
        "chat_template": cfg.data.chat_template,
    }
    marker = rdir / "sampling.json"
    if marker.is_file():
        before = read_json(marker)
        changed = [k for k in settings if before.get(k) != settings[k]]
        if changed:
            key = changed[0]
            raise ConfigError(
                f"{_SETTING_KEYS.get(key, 'iterate.' + key)}: round {r} was sampled with {before.get(key)!r}, "
                f"now {settings[key]!r}; restore it, or delete {rdir} to sample that round again"
            )
        log(f"round {r}: reusing the samples in {rdir / 'samples.jsonl'}")
        return [PromptSamples(**row) for row in read_jsonl(rdir / "samples.jsonl")]
    log(f"round {r}: sampling {len(prompts) * it.samples_per_prompt} responses from {start}")
    samples = sample_and_score(
        cfg, start, prompts, it.samples_per_prompt, cfg.seed + r * _SEED_STREAM, reward
    )
    write_jsonl(rdir / "samples.jsonl", [s.to_row() for s in samples])
    write_json(marker, settings)  # last: its presence says samples.jsonl is complete
    return samples


def sample_and_score(
    cfg: Config, model_dir: str, prompts: list[str], k: int, seed: int, reward: RewardFn
) -> list[PromptSamples]:
    """K responses per prompt from the model in ``model_dir``, scored by ``reward``.

    Prompts are rendered as training will render them (data.input_template, data.apply_chat_template,
    data.chat_template), so the pairs are trained on the very context they were sampled in.
    """
    it = cfg.iterate
    tokenizer = load_tokenizer(model_dir, cfg.model.trust_remote_code)
    if cfg.data.chat_template is not None:
        tokenizer.chat_template = cfg.data.chat_template
    if cfg.data.apply_chat_template and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"data.apply_chat_template: {model_dir} has no chat template; set data.chat_template"
        )
    template = cfg.data.input_template
    rendered = [template.replace("{}", p) if template is not None else p for p in prompts]
    model = load_model(model_dir, cfg.model)
    model.to(default_device())  # type: ignore[arg-type]
    options = SamplingOptions(
        max_new_tokens=it.max_new_tokens,
        temperature=it.temperature,
        top_p=it.top_p,
        batch_size=it.generation_batch_size,
        seed=seed,
        chat=cfg.data.apply_chat_template,
    )
    groups = sample_responses(model, tokenizer, rendered, k, options)
    del model
    gc.collect()  # the policy goes before training loads its own copy (and a reference)
    flat = [s for group in groups for s in group]
    # Decoded as generated: sample.text is stripped, and a stripped leading space would tokenise differently.
    responses = [tokenizer.decode(s.response_ids, skip_special_tokens=True) for s in flat]
    where = [f"prompt {s.prompt_index}, sample {n % k}" for n, s in enumerate(flat)]
    scores = score(reward, [prompts[s.prompt_index] for s in flat], responses, where)
    return [
        PromptSamples(
            index=i,
            prompt=prompts[i],
            responses=responses[i * k : (i + 1) * k],
            scores=scores[i * k : (i + 1) * k],
            finished=[s.finished for s in group],
        )
        for i, group in enumerate(groups)
    ]


def _eval_reward(cfg: Config, model_dir: str, prompts: list[str], reward: RewardFn, path: Path) -> float:
    """Mean reward of the model's samples on the held-out prompts; one seed for every round, so each model
    is judged on the same prompts under the same random stream."""
    samples = sample_and_score(cfg, model_dir, prompts, cfg.iterate.eval_samples_per_prompt, cfg.seed, reward)
    write_jsonl(path, [s.to_row() for s in samples])
    return statistics.fmean(x for s in samples for x in s.scores)


def _reference(cfg: Config, start: str) -> str | None:
    """The folder round r's reference loads from; None when the plan loads none (a reference-free loss, or
    LoRA, whose reference is the round's starting policy with its adapters off)."""
    if not plan_reference(cfg).loads_model:
        return None
    return start if cfg.iterate.reference == "round" else cfg.model.name_or_path


def _round_config(cfg: Config, r: int, start: str) -> Config:
    """The `preftune train` config of round r: the user's settings with the round's model, reference and data."""
    rc = copy.deepcopy(cfg)
    rc.output_dir = str(Path(cfg.output_dir) / f"round-{r}")
    rc.model.name_or_path = start
    rc.ref.name_or_path = _reference(cfg, start)
    rc.data.train = [str(Path(rc.output_dir) / "pairs.jsonl")]
    rc.data.train_probs = None
    # One store folder for all rounds: the eval split is the same each round, so it is tokenised once.
    rc.data.cache_dir = cfg.data.cache_dir or str(RunFolder(Path(cfg.output_dir)).data_cache)
    # pairs.jsonl is written with these keys whatever the user's own data uses.
    rc.data.prompt_key, rc.data.chosen_key, rc.data.rejected_key = "prompt", "chosen", "rejected"
    rc.data.responses_key, rc.data.scores_key = "responses", "scores"
    return rc
