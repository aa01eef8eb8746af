"""``preftune demo`` (the real-model pipeline) run as a user runs it, on a toy model and a tiny review corpus
placed in the cache beforehand, so nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch import run_cli
from preftune.io import read_jsonl
from preftune.showcase.acquire import ROTTEN_TOMATOES_CSV
from preftune.toy import write_toy_model_dir
from toy_env import write_review_corpus


def _cached_corpus(cache: Path) -> Path:
    spec = ROTTEN_TOMATOES_CSV
    folder = cache / "files" / f"{spec.package}-{spec.version}"
    folder.mkdir(parents=True)
    return write_review_corpus(folder / Path(spec.member).name)


@pytest.mark.slow
def test_real_demo_pipeline_end_to_end_on_a_toy_model(tmp_path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    _cached_corpus(cache)
    model = write_toy_model_dir(tmp_path / "model", hidden_size=32)
    result = run_cli("demo",
        "--cache_dir", str(cache), "--model.name_or_path", str(model), "--output_dir", str(out),
        "--demo.heldout_movies", "3", "--demo.samples_per_prompt", "3", "--demo.max_new_tokens", "5",
        "--demo.generation_batch", "4", "--train.batch_size", "2", "--train.micro_batch_size", "2",
        "--train.max_steps", "3", "--train.eval_steps", "2", "--optim.lr", "1e-3", "--log.progress", "false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (cache / "models").exists()  # a given model is used as is, never fetched
    assert "mean VADER sentiment of generations" in result.stdout and "report:" in result.stdout

    train = {r["movie"] for r in read_jsonl(out / "inputs" / "train.jsonl")}
    held = {r["movie"] for r in read_jsonl(out / "inputs" / "heldout.jsonl")}
    assert len(held) == 3 and len(train) == 6 and not train & held

    results = json.loads((out / "results.json").read_text())
    assert len(results["before_sentiments"]) == len(results["after_sentiments"]) == 9  # 3 movies x 3 samples
    assert results["before"]["kl"] == 0.0 and results["after"]["kl"] != 0.0
    assert results["before"]["eval/rewards/accuracies"] == 0.0  # policy == reference: all ties
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if "eval/loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]
    assert results["after"]["eval/rewards/margins"] == evals[-1]["eval/rewards/margins"]
    assert len(results["examples"]) == 3
    page = (out / "report.html").read_text()
    assert all((out / name).is_file() and name in page for name in ("training.png", "sentiment.png"))
    assert not list(out.glob("report-*.png"))  # the run report stays off: the demo's page takes its name
    assert (out / "final" / "config.json").is_file()


@pytest.mark.slow
def test_bad_key_is_refused_before_anything_is_downloaded(tmp_path) -> None:
    cache = tmp_path / "cache"
    result = run_cli(
        "demo", "--cache_dir", str(cache), "--loss.beta", "-1", "--output_dir", str(tmp_path / "run")
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "preftune: error: loss.beta: must be > 0, got -1.0"
    assert not cache.exists()
    result = run_cli("demo", "--demo.heldout", "3", "--output_dir", str(tmp_path / "run"))
    assert result.returncode == 2 and "unknown option --demo.heldout" in result.stderr


@pytest.mark.slow
def test_iterate_demo_scores_with_vader_on_movie_prompts(tmp_path) -> None:
    cache, out = tmp_path / "cache", tmp_path / "run"
    _cached_corpus(cache)
    model = write_toy_model_dir(tmp_path / "model", hidden_size=32)
    result = run_cli(
        "iterate", "--demo", "--cache_dir", str(cache),
        "--model.name_or_path", str(model), "--output_dir", str(out), "--demo.heldout_movies", "3",
        "--iterate.samples_per_prompt", "3", "--iterate.max_new_tokens", "6", "--iterate.min_score_gap", "0",
        "--iterate.eval_samples_per_prompt", "1", "--train.batch_size", "2", "--train.micro_batch_size", "2",
        "--log.progress", "false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    prompts = read_jsonl(out / "inputs" / "prompts.jsonl")
    held = read_jsonl(out / "inputs" / "eval_prompts.jsonl")
    assert len(prompts) == 6 and len(held) == 3  # 9 movies with both kinds in the corpus: 6 train, 3 held out
    assert not {p["prompt"] for p in prompts} & {p["prompt"] for p in held}
    from preftune.showcase.sentiment import vader_scores

    samples = read_jsonl(out / "round-1" / "samples.jsonl")
    for row in samples:  # the stored rewards are VADER's compound scores of the responses
        assert row["scores"] == vader_scores(row["responses"])
    assert len(read_jsonl(out / "iterate.jsonl")) == 2  # the default: 2 rounds
    assert "held-out movies: mean VADER sentiment (the reward)" in result.stdout
