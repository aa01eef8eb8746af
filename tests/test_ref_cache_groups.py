"""``ref.precompute`` on prompt-group runs (data.groups) end to end on the toy model: the same training as the
live reference, reuse, a changed response or score, a damaged file, resume, a pair run's cache serving the same
rows as groups of two, and 2 DDP processes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from launch import TORCHRUN, launch, train_args
from preftune.config import ConfigError
from preftune.reference.cache import cache_header, read_cache
from preftune.toy import synthetic_preference_rows
from preftune.training import runner
from test_ref_cache_training import Spy, assert_same_cache_files, damage, spied_train
from test_trainer import _crash_after_checkpoint
from toy_env import (
    assert_close_weights,
    assert_same_metrics,
    group_rows,
    load_weights,
    logged_metrics,
    toy_config,
    toy_workspace,
    write_jsonl,
)

# 33 training groups of 4: 2 processes score 17 and 16 of them, two per forward, so the shorter shard runs a
# filler forward. The pass scores with the eval micro batch size, training uses other micro-batches.
RUN = {
    "data.groups": True, "loss.pairs": "all", "train.max_steps": 4, "train.micro_batch_size": 2,
    "train.eval_micro_batch_size": 2, "train.eval_steps": 2, "ckpt.save_steps": 2, "optim.adam_eps": 1e-3,
}  # fmt: skip
PRECOMPUTE = {"ref.precompute": True}
TRAIN_FORWARDS = 17  # ceil(33 / 2)
EVAL_FORWARDS = 8  # 16 / 2


def _rows(count: int, seed: int) -> list[dict]:
    return group_rows(synthetic_preference_rows(count, seed=seed))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ws_groupcache")
    paths = toy_workspace(root, n_train=16, n_eval=8)
    paths["pair_train"], paths["pair_eval"] = paths["train"], paths["eval"]
    paths["train"] = str(write_jsonl(root / "group_train.jsonl", _rows(33, seed=1)))
    paths["eval"] = str(write_jsonl(root / "group_eval.jsonl", _rows(16, seed=2)))
    return paths


def _train(ws: dict[str, str], out: Path, monkeypatch: pytest.MonkeyPatch, **opts: Any) -> Spy:
    return spied_train(toy_config(ws, out, **{**RUN, **opts}), monkeypatch)


@pytest.fixture(scope="module")
def live_run(ws, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("live")
    runner.train(toy_config(ws, out, **RUN))
    return out


@pytest.fixture(scope="module")
def cached_run(ws, tmp_path_factory) -> tuple[Path, Path, Spy]:
    out = tmp_path_factory.mktemp("cached")
    with pytest.MonkeyPatch.context() as patch:
        spy = _train(ws, out, patch, **PRECOMPUTE)
    return out, out / "ref_cache", spy


@pytest.fixture
def own_cache(cached_run, tmp_path) -> Path:
    """A copy of the first run's cache, for a test that adds files to it or damages it."""
    return shutil.copytree(cached_run[1], tmp_path / "own_cache")


def _cache_opts(cache: Path) -> dict[str, Any]:
    return {**PRECOMPUTE, "ref.cache_dir": str(cache)}


@pytest.mark.equivalence
def test_group_precompute_trains_like_the_live_reference(live_run, cached_run) -> None:
    out, cache, spy = cached_run
    assert spy.said("computed 33 train groups") and spy.said("computed 16 eval groups")
    assert spy.forwards == TRAIN_FORWARDS + EVAL_FORWARDS  # the pass only: no reference forward in training
    (train_file,) = cache.glob("train-*")
    head = cache_header(train_file)
    assert (head["rows"], head["responses"]) == (33, 4 * 33)
    live, cached = logged_metrics(live_run), logged_metrics(out)
    assert [r["step"] for r in cached] == [r["step"] for r in live] and len(live) >= 4
    for want, got in zip(live, cached, strict=True):
        key = "eval/loss" if "eval/loss" in want else "loss"
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=0), (want["step"], key)
    assert_same_metrics(live_run, out, atol=1e-6)
    assert_close_weights(load_weights(live_run / "final"), load_weights(out / "final"), rtol=1e-5, atol=1e-6)


def test_second_group_run_reuses_the_cache_without_a_reference(ws, cached_run, tmp_path, monkeypatch) -> None:
    first, cache, _ = cached_run
    spy = _train(ws, tmp_path / "again", monkeypatch, **_cache_opts(cache))
    assert sum("reusing cache" in line and str(cache) in line for line in spy.lines) == 2  # train and eval
    assert not spy.said("computed") and spy.forwards == 0
    assert len(spy.loaded) == 1  # the policy only
    assert logged_metrics(tmp_path / "again") == logged_metrics(first)  # the same stored values, bit for bit


def test_one_changed_response_changes_the_train_key(ws, own_cache, tmp_path, monkeypatch) -> None:
    rows = _rows(33, seed=1)
    rows[20]["responses"][2] += " no"
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    spy = _train({**ws, "train": str(train)}, tmp_path / "out", monkeypatch, **_cache_opts(own_cache))
    assert spy.said("computed 33 train groups") and spy.said("reusing cache")  # eval is unchanged
    assert spy.forwards == TRAIN_FORWARDS
    keys = {cache_header(path)["key"] for path in own_cache.glob("train-*")}
    assert len(keys) == 2  # a new file under a new key; the old one stays for the runs that use it


def test_rescored_responses_reuse_the_cache(ws, own_cache, tmp_path, monkeypatch) -> None:
    rows = _rows(33, seed=1)
    rows[4]["scores"] = [0.0, 1.0, 0.5, 0.25]  # other scores, the same texts: the same reference log-probs
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    spy = _train({**ws, "train": str(train)}, tmp_path / "out", monkeypatch, **_cache_opts(own_cache))
    assert not spy.said("computed") and spy.forwards == 0


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_group_cache_is_recomputed(ws, cached_run, own_cache, tmp_path, monkeypatch, how) -> None:
    (path,) = own_cache.glob("train-*")
    damage(path, how)
    spy = _train(ws, tmp_path / "out", monkeypatch, **_cache_opts(own_cache))
    why = "truncated" if how == "truncate" else "checksum"
    assert spy.said(f"cache {path} is unusable") and spy.said(why) and spy.said("computed 33 train groups")
    assert spy.forwards == TRAIN_FORWARDS  # the eval file was whole
    assert read_cache(path, cache_header(path)["key"], "train", [4] * 33).num_rows == 33  # rewritten whole
    assert logged_metrics(tmp_path / "out") == logged_metrics(cached_run[0])


def test_group_resume_uses_the_cache_and_checks_its_key(ws, cached_run, tmp_path, monkeypatch) -> None:
    full, cache, _ = cached_run
    split = tmp_path / "split"
    with monkeypatch.context() as patch:
        _crash_after_checkpoint(patch, step=2)
        with pytest.raises(KeyboardInterrupt):
            runner.train(toy_config(ws, split, **RUN, **_cache_opts(cache)))
    spy = _train(ws, split, monkeypatch, **_cache_opts(cache))
    assert spy.said("reusing cache") and spy.forwards == 0
    assert logged_metrics(split) == logged_metrics(full)

    changed = tmp_path / "changed"
    shutil.copytree(split / "checkpoints" / "step-00000002", changed / "checkpoints" / "step-00000002")
    rows = _rows(33, seed=1)
    rows[0]["responses"][3] += " yes"
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ConfigError, match=r"ckpt\.resume: .* the tokenised training data changed since"):
        runner.train(toy_config({**ws, "train": str(train)}, changed, **RUN, **_cache_opts(cache)))


def test_a_pair_runs_cache_serves_its_rows_as_groups(ws, tmp_path, monkeypatch) -> None:
    pairs = {**ws, "train": ws["pair_train"], "eval": ws["pair_eval"]}
    cache = tmp_path / "cache"
    pair_opts = {"train.max_steps": 2, "train.eval_steps": 2, "ckpt.save_steps": 2, **_cache_opts(cache)}
    first = _train(pairs, tmp_path / "pairs", monkeypatch, **pair_opts, **{"data.groups": False})
    assert first.said("computed 16 train pairs") and first.said("computed 8 eval pairs")
    spy = _train(pairs, tmp_path / "groups", monkeypatch, **pair_opts)
    assert sum("reusing cache" in line for line in spy.lines) == 2 and spy.forwards == 0
    assert spy.said("16 train groups")
    for want, got in zip(
        logged_metrics(tmp_path / "pairs"), logged_metrics(tmp_path / "groups"), strict=True
    ):
        key = "eval/loss" if "eval/loss" in want else "loss"
        assert got[key] == pytest.approx(want[key], rel=1e-6), (want["step"], key)


@pytest.mark.slow
@pytest.mark.equivalence
def test_two_ddp_processes_precompute_groups_as_one(ws, live_run, cached_run, tmp_path) -> None:
    out = tmp_path / "ddp"
    opts = {**RUN, "data.groups": "true", "ref.precompute": "true"}
    result = launch(train_args(TORCHRUN, ws, out, "ddp", opts))
    assert result.stdout.count("reference log-probs: computed") == 2  # rank 0 logs, once per split
    assert_same_metrics(live_run, out, atol=1e-6)
    assert_same_cache_files(cached_run[1], out / "ref_cache", width=4)  # rank 0 wrote what one process writes
    assert logged_metrics(out)[-1]["step"] == 4
