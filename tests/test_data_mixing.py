"""Mixing sources by probability and subsetting with max_samples: exact counts, seeded, identities kept."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from preftune.config import DataConfig
from preftune.data import load_rows


def write_source(path: Path, n: int, tag: str) -> str:
    rows = [
        {"prompt": f"{tag} question {i}", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def two_sources(tmp_path: Path) -> tuple[str, str]:
    return write_source(tmp_path / "small.jsonl", 10, "a"), write_source(tmp_path / "big.jsonl", 20, "b")


def identities(cfg: DataConfig, tokenizer, seed: int, split: str = "train") -> list[tuple[str, int]]:
    pairs, _ = load_rows(cfg, tokenizer, split, seed)  # type: ignore[arg-type]
    return [(p.source, p.index) for p in pairs]


def test_probabilities_give_exact_counts_with_oversampling(two_sources, toy_tokenizer) -> None:
    small, big = two_sources
    cfg = DataConfig(train=[small, big], train_probs=[3, 1], max_samples=40)
    pairs, report = load_rows(cfg, toy_tokenizer, "train", seed=7)
    per_row = Counter((p.source, p.index) for p in pairs)
    # small: round(0.75 * 40) = 30 draws from 10 rows = three full permutations, each row exactly 3 times.
    assert {i: per_row[(small, i)] for i in range(10)} == dict.fromkeys(range(10), 3)
    # big: round(0.25 * 40) = 10 distinct rows out of 20.
    big_rows = [i for (src, i) in per_row if src == big]
    assert len(big_rows) == 10 and all(per_row[(big, i)] == 1 for i in big_rows)
    assert report.sources == {
        small: {"rows": 10, "used": 30, "repeated": 20},
        big: {"rows": 20, "used": 10, "repeated": 0},
    }
    assert report.rows_read == 40 and report.kept == 40
    # Pair ids follow the row identity: a repeated row is the same pair each time.
    first = {(p.source, p.index): p for p in pairs}
    assert all(first[(p.source, p.index)] == p for p in pairs)


def test_probabilities_without_max_samples_use_total_size(two_sources, toy_tokenizer) -> None:
    small, big = two_sources
    _, report = load_rows(DataConfig(train=[small, big], train_probs=[1, 1]), toy_tokenizer, "train", 0)
    assert report.sources[small]["used"] == 15 and report.sources[small]["repeated"] == 5
    assert report.sources[big]["used"] == 15 and report.sources[big]["repeated"] == 0
    _, report = load_rows(
        DataConfig(train=[small, big], train_probs=[1, 2], max_samples=10), toy_tokenizer, "train", 0
    )
    assert (report.sources[small]["used"], report.sources[big]["used"]) == (3, 7)  # round(3.33), round(6.67)


def test_mixing_is_seeded(two_sources, toy_tokenizer) -> None:
    cfg = DataConfig(train=list(two_sources), train_probs=[1, 1], max_samples=16)
    assert identities(cfg, toy_tokenizer, seed=1) == identities(cfg, toy_tokenizer, seed=1)
    assert identities(cfg, toy_tokenizer, seed=1) != identities(cfg, toy_tokenizer, seed=2)


def test_max_samples_keeps_a_seeded_ordered_subset(two_sources, toy_tokenizer) -> None:
    small, big = two_sources
    everything = identities(DataConfig(train=[small, big]), toy_tokenizer, seed=0)
    assert everything == [(small, i) for i in range(10)] + [(big, i) for i in range(20)]
    cfg = DataConfig(train=[small, big], max_samples=7)
    subset = identities(cfg, toy_tokenizer, seed=3)
    assert len(subset) == 7 and len(set(subset)) == 7
    assert subset == sorted(subset, key=everything.index)  # relative order kept
    assert subset == identities(cfg, toy_tokenizer, seed=3)
    assert subset != identities(cfg, toy_tokenizer, seed=4)
    assert len(identities(DataConfig(train=[small], max_samples=100), toy_tokenizer, seed=0)) == 10


def test_eval_ignores_train_settings(two_sources, toy_tokenizer) -> None:
    small, big = two_sources
    cfg = DataConfig(train=[small], train_probs=[1.0], max_samples=2, eval=[small, big], eval_max_samples=5)
    evals = identities(cfg, toy_tokenizer, seed=0, split="eval")
    assert len(evals) == 5 and len(set(evals)) == 5
    cfg.eval_max_samples = None
    assert len(identities(cfg, toy_tokenizer, seed=0, split="eval")) == 30
