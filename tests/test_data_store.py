"""The tokenised store: what it gives is, id for id and count for count, what the plain in-memory path gives
(tests/data_reference.py) on random mixtures with drops; it is reused under its key and rebuilt when anything
that changes ids changes; a build killed mid-write is never read."""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace
from pathlib import Path

import pytest

from data_reference import plain_load
from preftune.config import DataConfig
from preftune.data import DataError, load_rows
from preftune.data import build as build_module
from preftune.data import store as store_module
from preftune.data.store import RowStore, building, is_complete, source_fingerprint, store_key
from preftune.data.view import padded_widths, response_counts

WORDS = ["alpha", "beta", "gamma", "delta", "echo", "fox", "golf", "hotel", "india", "juliet", "kilo", "lima"]


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _row(rng: random.Random, i: int, groups: bool) -> dict:
    """A pair row (or with ``groups`` now and then a group row), now and then one that is dropped (empty,
    identical, too long, bad or tied scores)."""
    kind = rng.random()
    prompt = f"Q{i}: " + _text(rng, 1, 12)
    if kind < 0.08:
        return {"prompt": prompt, "chosen": " ", "rejected": " no"}  # empty_field
    if kind < 0.14:
        return {"prompt": prompt, "chosen": " same", "rejected": " same"}  # identical_responses
    if kind < 0.22:
        return {
            "prompt": prompt,
            "chosen": " " + _text(rng, 40, 60),
            "rejected": " x",
        }  # long: cut or dropped
    if groups and kind < 0.45:
        k = rng.randint(2, 5)
        responses = [" " + _text(rng, 1, 6) for _ in range(k)]
        scores = [rng.choice([0.0, 0.5, 1.0]) for _ in range(k)] if rng.random() > 0.1 else [1.0]
        return {"prompt": prompt, "responses": responses, "scores": scores}
    return {"prompt": prompt, "chosen": " " + _text(rng, 1, 8), "rejected": " " + _text(rng, 1, 8)}


def _sources(root: Path, groups: bool) -> list[str]:
    rng = random.Random(0)
    paths = []
    for s, n in enumerate((37, 23, 11)):
        path = root / f"src{s}.jsonl"
        path.write_text("".join(json.dumps(_row(rng, i, groups)) + "\n" for i in range(n)))
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Pair rows only."""
    return _sources(tmp_path_factory.mktemp("pair_sources"), groups=False)


@pytest.fixture(scope="module")
def group_sources(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Pair and group rows."""
    return _sources(tmp_path_factory.mktemp("group_sources"), groups=True)


def _same_as_plain(cfg: DataConfig, tokenizer, seed: int, tmp_path: Path) -> None:
    rows, report = load_rows(cfg, tokenizer, "train", seed, tmp_path / "cache")
    want, want_report = plain_load(cfg, tokenizer, "train", seed)
    assert list(rows) == want
    assert report.to_dict() == want_report.to_dict()
    assert json.dumps(report.to_dict()) == json.dumps(want_report.to_dict())  # the same key order too
    assert report.untemplated_prompts == want_report.untemplated_prompts
    assert report.dropped and report.kept == len(want)  # the rows include drops of several kinds
    assert padded_widths(rows).tolist() == [len(g.prompt_ids) + max(map(len, g.responses)) for g in want]
    assert response_counts(rows) == [len(g.responses) for g in want]


@pytest.mark.parametrize("groups", [False, True])  # pair rows only, or pair and group rows mixed
@pytest.mark.parametrize(
    "mix",
    [
        {},
        {"max_samples": 29},
        {"train_probs": [3.0, 1.0, 2.0], "max_samples": 90},  # oversampled: rows drawn several times
        {"train_probs": [1.0, 0.0, 1.0]},  # a source drawn from not at all
        {"truncation": "drop", "max_len": 24},
        {"max_responses": 3, "max_len": 30, "truncation": "response_right", "report_examples": 2},
    ],
)
def test_the_store_gives_what_the_plain_path_gives(
    sources, group_sources, toy_tokenizer, tmp_path, monkeypatch, groups, mix
) -> None:
    # Chunks of 4 rows in 2 worker processes: the forked workers, their ordering and chunk edges all run.
    monkeypatch.setattr(build_module, "CHUNK_ROWS", 4)
    monkeypatch.setattr(build_module, "_PARALLEL_FROM_CHUNKS", 1)
    train = group_sources if groups else sources
    # Without the chat template the toy tokenizer's template goes unused: untemplated_prompts counts.
    for seed, template in ((0, True), (5, False)):
        cfg = DataConfig(
            **{"train": train, "num_proc": 2, "max_len": 48, "apply_chat_template": template, **mix}
        )
        _same_as_plain(cfg, toy_tokenizer, seed, tmp_path)


def test_a_store_is_reused_and_rebuilt_when_a_source_changes(sources, toy_tokenizer, tmp_path) -> None:
    source = tmp_path / "a.jsonl"
    source.write_text(Path(sources[0]).read_text())
    cfg = DataConfig(train=[str(source)])
    first, _ = load_rows(cfg, toy_tokenizer, "train", 0, tmp_path / "cache")
    again, _ = load_rows(cfg, toy_tokenizer, "train", 0, tmp_path / "cache")
    assert not first.store.reused and again.store.reused and again == first
    assert again.store.folder == first.store.folder
    source.write_text(
        source.read_text() + json.dumps({"prompt": "new", "chosen": " a", "rejected": " b"}) + "\n"
    )
    changed, _ = load_rows(cfg, toy_tokenizer, "train", 0, tmp_path / "cache")
    assert not changed.store.reused and len(changed) == len(first) + 1
    # Only opening (a process that waits for another to build) refuses a store that is not there.
    with pytest.raises(DataError, match="no complete tokenised store"):
        load_rows(replace(cfg, max_len=77), toy_tokenizer, "train", 0, tmp_path / "cache", build=False)


def test_rows_are_numbered_by_position(group_sources, toy_tokenizer) -> None:
    rows, _ = load_rows(DataConfig(train=group_sources[:1]), toy_tokenizer, "train", 0)
    assert {r.row_id for r in rows} == {-1}
    rows.number_from(10)
    assert [r.row_id for r in rows] == list(range(10, 10 + len(rows)))
    assert rows[-1].row_id == 10 + len(rows) - 1


def test_the_key_moves_with_what_changes_ids_only(sources, toy_tokenizer) -> None:
    cfg = DataConfig(train=sources[:2], eval=sources[2:])
    base = store_key(cfg, "train", cfg.train, toy_tokenizer, 0)
    assert store_key(cfg, "train", cfg.train, toy_tokenizer, 0) == base  # deterministic
    for changed in ({"max_len": 40}, {"prompt_key": "question"}, {"max_samples": 3}, {"report_examples": 1}):
        assert store_key(replace(cfg, **changed), "train", cfg.train, toy_tokenizer, 0) != base, changed
    for same in ({"shuffle": False}, {"cache_dir": "/elsewhere"}, {"num_proc": 7}, {"eval_max_samples": 1}):
        assert store_key(replace(cfg, **same), "train", cfg.train, toy_tokenizer, 0) == base, same
    assert store_key(cfg, "eval", cfg.train, toy_tokenizer, 0) != base
    assert store_key(cfg, "train", cfg.train, toy_tokenizer, 1) != base


def test_a_source_edit_changes_its_fingerprint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    first = source_fingerprint(path)
    assert source_fingerprint(path) == first
    path.write_text(path.read_text())
    os.utime(path, ns=(1, 1))
    assert source_fingerprint(path) == first  # a small file rewritten with the same content: the same key
    stat = path.stat()
    path.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "b"}) + "\n")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same time: the bytes differ
    assert source_fingerprint(path) != first
    # A large file (here: over a 16-byte limit) is keyed by size, time and sampled blocks instead.
    monkeypatch.setattr(store_module, "_WHOLE", 16)
    monkeypatch.setattr(store_module, "_SAMPLE", 8)
    large = source_fingerprint(path)
    os.utime(path, ns=(2, 2))
    assert source_fingerprint(path) != large
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    text = path.read_text()
    path.write_text(text[:14] + ("x" if text[14] != "x" else "y") + text[15:])  # in no sampled block
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert source_fingerprint(path) == large  # the stated limit of the rule for large files


def test_a_build_killed_mid_write_is_never_read(sources, toy_tokenizer, tmp_path, monkeypatch) -> None:
    cfg = DataConfig(train=sources)
    calls = {"n": 0}
    real = build_module.ChunkConverter.__call__

    def dies_on_the_second_source(self, rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, rows)

    monkeypatch.setattr(build_module.ChunkConverter, "__call__", dies_on_the_second_source)
    with pytest.raises(KeyboardInterrupt):
        load_rows(cfg, toy_tokenizer, "train", 0, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no store and no temporary folder left
    monkeypatch.undo()
    rows, _ = load_rows(cfg, toy_tokenizer, "train", 0, tmp_path)
    key = store_key(cfg, "train", cfg.train, toy_tokenizer, 0)
    assert is_complete(rows.store.folder, key) and not is_complete(rows.store.folder, "another key")


def test_a_second_builder_of_the_same_key_keeps_the_first(sources, toy_tokenizer, tmp_path) -> None:
    rows, _ = load_rows(DataConfig(train=sources), toy_tokenizer, "train", 0, tmp_path)
    folder = rows.store.folder
    key = json.loads((folder / "meta.json").read_text())["key"]
    with building(tmp_path, key) as tmp:
        (tmp / "meta.json").write_text("{}")  # a second, different build that finishes later
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]
    assert RowStore(folder).meta["key"] == key and len(RowStore(folder)) == len(rows)
