"""``ref.precompute`` end to end on the toy model, on pair rows and on rows of four scored responses: same
training as the live reference, reuse, invalidation (a changed row, response or weight; rescored responses reuse
the table), the reference freed, resume, a damaged cache, DDP / FSDP2 with 2 processes, and the CLI."""

from __future__ import annotations

import gc
import shutil
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from launch import PREFTUNE, TORCHRUN, launch, train_args
from preftune.config import Config, ConfigError
from preftune.model import loading
from preftune.reference.cache import CachedReference, cache_header, read_cache
from preftune.reference.sources import ModelReference
from preftune.toy import synthetic_preference_rows
from preftune.training import runner
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

# 49 training pairs: 2 processes score 25 and 24 of them in the precompute pass, one pair per forward, so
# the shorter shard must run a filler forward for a sharded (FSDP2) reference. The eval set stays even: the
# trainer's own evaluation under FSDP2 needs equal eval shards (see the report).
RUN = {
    "train.max_steps": 4, "train.micro_batch_size": 2, "train.eval_micro_batch_size": 1, "train.eval_steps": 2,
    "ckpt.save_steps": 2, "optim.adam_eps": 1e-3,
}  # fmt: skip


WORKSPACE = {"n_train": 49, "n_eval": 16}  # the sizes of this module's `ws` (tests/conftest.py)


class Spy:
    """Counts reference forwards and model loads, and collects the run's log lines."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.forwards = 0
        self.loaded: list[weakref.ref] = []
        self.lines: list[str] = []
        real_load = loading.load_model

        def load(*args: Any, **kwargs: Any) -> Any:
            model = real_load(*args, **kwargs)
            self.loaded.append(weakref.ref(model))
            return model

        counted = self._counted(ModelReference.response_logps)
        monkeypatch.setattr(ModelReference, "response_logps", counted)
        monkeypatch.setattr(loading, "load_model", load)

    def _counted(self, real: Any) -> Any:
        def forward(ref: ModelReference, batch: Any) -> Any:
            self.forwards += 1
            return real(ref, batch)

        return forward

    def log(self, line: str) -> None:
        self.lines.append(line)

    def said(self, needle: str) -> bool:
        return any(needle in line for line in self.lines)


def spied_train(cfg: Config, monkeypatch: pytest.MonkeyPatch) -> Spy:
    """``preftune train`` with a :class:`Spy` watching it."""
    with monkeypatch.context() as patch:
        spy = Spy(patch)
        runner.train(cfg, log=spy.log)
    return spy


def damage(path: Path, how: str) -> None:
    """Cut a file's last 100 bytes ("truncate") or flip one bit near its end ("flip")."""
    raw = bytearray(path.read_bytes())
    if how == "truncate":
        del raw[-100:]
    else:
        raw[-5] ^= 0x01
    path.write_bytes(bytes(raw))


def assert_same_cache_files(expected: Path, actual: Path, width: int) -> None:
    """Two cache folders hold the same files (keys), whose tables of ``width`` responses a row agree."""
    assert sorted(p.name for p in expected.iterdir()) == sorted(p.name for p in actual.iterdir())
    for path in actual.iterdir():
        head = cache_header(path)
        key, split, widths = head["key"], head["split"], [width] * head["rows"]
        want = read_cache(expected / path.name, key, split, widths).values
        torch.testing.assert_close(read_cache(path, key, split, widths).values, want, rtol=1e-5, atol=1e-6)


def _train(
    ws: dict[str, str], out: Path, monkeypatch: pytest.MonkeyPatch, run: dict[str, Any] = RUN, **opts: Any
) -> Spy:
    return spied_train(toy_config(ws, out, **{**run, **opts}), monkeypatch)


def _live_run(ws: dict[str, str], factory: pytest.TempPathFactory, run: dict[str, Any]) -> Path:
    out = factory.mktemp("live")
    runner.train(toy_config(ws, out, **run))
    return out


def _cached_run(
    ws: dict[str, str], factory: pytest.TempPathFactory, run: dict[str, Any]
) -> tuple[Path, Path, Spy]:
    out = factory.mktemp("cached")
    with pytest.MonkeyPatch.context() as patch:
        spy = _train(ws, out, patch, run, **{"ref.precompute": True})
    return out, out / "ref_cache", spy


def _assert_same_run(a: Path, b: Path, rtol: float = 1e-5) -> None:
    assert_same_metrics(a, b, atol=1e-7, rtol=rtol)
    assert_close_weights(load_weights(a / "final"), load_weights(b / "final"), rtol=rtol, atol=1e-6)


@pytest.fixture(scope="module")
def plain_run(ws, tmp_path_factory) -> Path:
    return _live_run(ws, tmp_path_factory, RUN)


@pytest.fixture(scope="module")
def cached_run(ws, tmp_path_factory) -> tuple[Path, Path, Spy]:
    return _cached_run(ws, tmp_path_factory, RUN)


@pytest.fixture
def own_cache(cached_run, tmp_path) -> Path:
    """A copy of the first run's cache, for a test that adds files to it or damages it."""
    return shutil.copytree(cached_run[1], tmp_path / "own_cache")


@pytest.mark.equivalence
def test_precompute_trains_like_the_live_reference(plain_run, cached_run) -> None:
    out, cache, spy = cached_run
    assert spy.said("computed 49 train rows") and spy.said("computed 16 eval rows")
    assert spy.forwards == 49 + 16  # one pass, one pair per forward (eval micro batch 1), none while training
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["eval", "train"]
    _assert_same_run(plain_run, out)


def test_second_run_reuses_the_cache_without_a_reference(ws, cached_run, tmp_path, monkeypatch) -> None:
    first, cache, _ = cached_run
    spy = _train(ws, tmp_path / "again", monkeypatch, **{"ref.precompute": True, "ref.cache_dir": str(cache)})
    assert spy.said("reusing cache") and not spy.said("computed")
    assert sum(str(cache) in line for line in spy.lines if "reusing cache" in line) == 2  # train and eval
    assert spy.forwards == 0
    assert len(spy.loaded) == 1  # the policy only: its starting weights are the reference's, hashed in place
    _assert_same_run(first, tmp_path / "again", rtol=1e-7)


def test_same_reference_from_another_folder_reuses_the_cache(ws, cached_run, tmp_path, monkeypatch) -> None:
    _, cache, _ = cached_run
    copy = shutil.copytree(ws["model"], tmp_path / "ref_copy")
    opts = {"ref.precompute": True, "ref.cache_dir": str(cache), "ref.name_or_path": str(copy)}
    spy = _train(ws, tmp_path / "out", monkeypatch, **opts)
    assert spy.said("reusing cache") and not spy.said("computed") and spy.forwards == 0


def test_one_changed_data_row_recomputes_that_split(ws, own_cache, tmp_path, monkeypatch) -> None:
    cache = own_cache
    rows = synthetic_preference_rows(49, seed=1)
    rows[30]["rejected"] += " no"
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    opts = {"ref.precompute": True, "ref.cache_dir": str(cache)}
    spy = _train({**ws, "train": str(train)}, tmp_path / "out", monkeypatch, **opts)
    assert spy.said("computed 49 train rows") and spy.said("reusing cache")  # eval is unchanged
    assert spy.forwards == 49


def test_one_changed_reference_weight_recomputes(ws, own_cache, tmp_path, monkeypatch) -> None:
    cache = own_cache
    ref = AutoModelForCausalLM.from_pretrained(ws["model"], dtype=torch.float32)
    with torch.no_grad():
        ref.model.layers[0].self_attn.v_proj.weight[1, 2] += 1e-3
    ref.save_pretrained(tmp_path / "ref")
    opts = {"ref.precompute": True, "ref.cache_dir": str(cache), "ref.name_or_path": str(tmp_path / "ref")}
    spy = _train(ws, tmp_path / "out", monkeypatch, **opts)
    assert spy.said("computed 49 train rows") and spy.said("computed 16 eval rows")
    assert not spy.said("reusing cache")
    assert len(list(cache.glob("train-*"))) == 2  # the other reference's file stays for the runs that use it


def test_reference_is_freed_before_training(ws, tmp_path, monkeypatch) -> None:
    checked: list[bool] = []
    real = CachedReference.response_logps

    def check(ref: CachedReference, batch: Any) -> Any:
        if not checked:
            gc.collect()
            policy, *others = spy.loaded
            checked.append(policy() is not None and len(others) == 1 and others[0]() is None)
        return real(ref, batch)

    monkeypatch.setattr(CachedReference, "response_logps", check)
    spy = Spy(monkeypatch)
    runner.train(toy_config(ws, tmp_path, **RUN, **{"ref.precompute": True}), log=spy.log)
    assert checked == [True]  # a reference model was loaded, scored the pairs and was gone at the first step


def test_resume_uses_the_cache_and_checks_its_key(ws, cached_run, tmp_path, monkeypatch) -> None:
    full, cache, _ = cached_run
    split = tmp_path / "split"
    opts = {"ref.precompute": True, "ref.cache_dir": str(cache)}
    with monkeypatch.context() as patch:
        _crash_after_checkpoint(patch, step=2)
        with pytest.raises(KeyboardInterrupt):
            runner.train(toy_config(ws, split, **RUN, **opts))
    spy = _train(ws, split, monkeypatch, **opts)
    assert spy.said("reusing cache") and spy.forwards == 0
    assert_close_weights(load_weights(full / "final"), load_weights(split / "final"), rtol=1e-6, atol=1e-6)
    assert logged_metrics(full) == logged_metrics(split)

    changed = tmp_path / "changed"
    shutil.copytree(split / "checkpoints" / "step-00000002", changed / "checkpoints" / "step-00000002")
    rows = synthetic_preference_rows(49, seed=1)
    rows[0]["chosen"] += " yes"
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ConfigError, match=r"ckpt\.resume: .* the tokenised training data changed since"):
        runner.train(toy_config({**ws, "train": str(train)}, changed, **RUN, **opts))


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_cache_file_is_recomputed(ws, cached_run, own_cache, tmp_path, monkeypatch, how) -> None:
    first, _, _ = cached_run
    mine = own_cache
    (path,) = mine.glob("train-*")
    damage(path, how)
    spy = _train(ws, tmp_path / "out", monkeypatch, **{"ref.precompute": True, "ref.cache_dir": str(mine)})
    why = "truncated" if how == "truncate" else "checksum"
    assert spy.said(f"cache {path} is unusable") and spy.said(why) and spy.said("computed 49 train rows")
    assert spy.said("reusing cache")  # the eval file was whole
    assert read_cache(path, cache_header(path)["key"], "train", [2] * 49).num_rows == 49  # rewritten whole
    _assert_same_run(first, tmp_path / "out", rtol=1e-7)


@pytest.mark.equivalence
def test_eval_command_with_precompute_matches_live(ws, tmp_path) -> None:
    live = runner.evaluate(toy_config(ws, tmp_path / "live"), log=lambda *_: None)
    cached = runner.evaluate(
        toy_config(ws, tmp_path / "cached", **{"ref.precompute": True}), log=lambda *_: None
    )
    assert cached.keys() == live.keys()
    for key in live:
        assert cached[key] == pytest.approx(live[key], rel=1e-6, abs=1e-7), key
    assert cached["eval/loss"] == pytest.approx(0.6931471805599453, rel=1e-6)  # policy == reference: ln 2


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_processes_match_one(ws, plain_run, cached_run, tmp_path, strategy) -> None:
    out = tmp_path / strategy
    result = launch(train_args(TORCHRUN, ws, out, strategy, {**RUN, "ref.precompute": "true"}))
    assert result.stdout.count("reference log-probs: computed") == 2  # rank 0 logs, once per split
    _assert_same_run(plain_run, out)
    assert_same_cache_files(cached_run[1], out / "ref_cache", width=2)  # rank 0 wrote what one process writes


@pytest.mark.slow
def test_cli_refuses_precompute_with_a_reference_free_loss(ws, tmp_path) -> None:
    args = train_args(PREFTUNE, ws, tmp_path, "single", {"ref.precompute": "true"})
    result = launch([*args, "--loss.type", "simpo"], ok=False)
    assert result.returncode == 2
    assert "ref.precompute: loss 'simpo' is reference-free" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- rows of K = 4 responses (pairs are K = 2)

# 33 training groups of 4: 2 processes score 17 and 16 of them, two per forward, so the shorter shard runs a
# filler forward. The pass scores with the eval micro batch size, training uses other micro-batches.
ROW_RUN = {
    "loss.pairs": "all", "train.max_steps": 4, "train.micro_batch_size": 2,
    "train.eval_micro_batch_size": 2, "train.eval_steps": 2, "ckpt.save_steps": 2, "optim.adam_eps": 1e-3,
}  # fmt: skip
ROW_TRAIN_FORWARDS = 17  # ceil(33 / 2)
ROW_EVAL_FORWARDS = 8  # 16 / 2


def _k4_rows(count: int, seed: int) -> list[dict]:
    return group_rows(synthetic_preference_rows(count, seed=seed))


@pytest.fixture(scope="module")
def row_ws(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("ws_groupcache")
    paths = toy_workspace(root, n_train=16, n_eval=8)
    paths["pair_train"], paths["pair_eval"] = paths["train"], paths["eval"]
    paths["train"] = str(write_jsonl(root / "group_train.jsonl", _k4_rows(33, seed=1)))
    paths["eval"] = str(write_jsonl(root / "group_eval.jsonl", _k4_rows(16, seed=2)))
    return paths


def _train_rows(row_ws: dict[str, str], out: Path, monkeypatch: pytest.MonkeyPatch, **opts: Any) -> Spy:
    return _train(row_ws, out, monkeypatch, ROW_RUN, **opts)


@pytest.fixture(scope="module")
def row_live_run(row_ws, tmp_path_factory) -> Path:
    return _live_run(row_ws, tmp_path_factory, ROW_RUN)


@pytest.fixture(scope="module")
def row_cached_run(row_ws, tmp_path_factory) -> tuple[Path, Path, Spy]:
    return _cached_run(row_ws, tmp_path_factory, ROW_RUN)


@pytest.fixture
def row_own_cache(row_cached_run, tmp_path) -> Path:
    """A copy of the first run's cache, for a test that adds files to it or damages it."""
    return shutil.copytree(row_cached_run[1], tmp_path / "row_own_cache")


def _row_cache_opts(cache: Path) -> dict[str, Any]:
    return {"ref.precompute": True, "ref.cache_dir": str(cache)}


@pytest.mark.equivalence
def test_group_precompute_trains_like_the_live_reference(row_live_run, row_cached_run) -> None:
    out, cache, spy = row_cached_run
    assert spy.said("computed 33 train rows") and spy.said("computed 16 eval rows")
    assert (
        spy.forwards == ROW_TRAIN_FORWARDS + ROW_EVAL_FORWARDS
    )  # the pass only: no reference forward in training
    (train_file,) = cache.glob("train-*")
    head = cache_header(train_file)
    assert (head["rows"], head["responses"]) == (33, 4 * 33)
    live, cached = logged_metrics(row_live_run), logged_metrics(out)
    assert [r["step"] for r in cached] == [r["step"] for r in live] and len(live) >= 4
    for want, got in zip(live, cached, strict=True):
        key = "eval/loss" if "eval/loss" in want else "loss"
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=0), (want["step"], key)
    assert_same_metrics(row_live_run, out, atol=1e-6)
    assert_close_weights(
        load_weights(row_live_run / "final"), load_weights(out / "final"), rtol=1e-5, atol=1e-6
    )


def test_second_group_run_reuses_the_cache_without_a_reference(
    row_ws, row_cached_run, tmp_path, monkeypatch
) -> None:
    first, cache, _ = row_cached_run
    spy = _train_rows(row_ws, tmp_path / "again", monkeypatch, **_row_cache_opts(cache))
    assert sum("reusing cache" in line and str(cache) in line for line in spy.lines) == 2  # train and eval
    assert not spy.said("computed") and spy.forwards == 0
    assert len(spy.loaded) == 1  # the policy only
    assert logged_metrics(tmp_path / "again") == logged_metrics(first)  # the same stored values, bit for bit


def test_one_changed_response_changes_the_train_key(row_ws, row_own_cache, tmp_path, monkeypatch) -> None:
    rows = _k4_rows(33, seed=1)
    rows[20]["responses"][2] += " no"
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    spy = _train_rows(
        {**row_ws, "train": str(train)}, tmp_path / "out", monkeypatch, **_row_cache_opts(row_own_cache)
    )
    assert spy.said("computed 33 train rows") and spy.said("reusing cache")  # eval is unchanged
    assert spy.forwards == ROW_TRAIN_FORWARDS
    keys = {cache_header(path)["key"] for path in row_own_cache.glob("train-*")}
    assert len(keys) == 2  # a new file under a new key; the old one stays for the runs that use it


def test_rescored_responses_reuse_the_cache(row_ws, row_own_cache, tmp_path, monkeypatch) -> None:
    rows = _k4_rows(33, seed=1)
    rows[4]["scores"] = [0.0, 1.0, 0.5, 0.25]  # other scores, the same texts: the same reference log-probs
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    spy = _train_rows(
        {**row_ws, "train": str(train)}, tmp_path / "out", monkeypatch, **_row_cache_opts(row_own_cache)
    )
    assert not spy.said("computed") and spy.forwards == 0


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_damaged_group_cache_is_recomputed(
    row_ws, row_cached_run, row_own_cache, tmp_path, monkeypatch, how
) -> None:
    (path,) = row_own_cache.glob("train-*")
    damage(path, how)
    spy = _train_rows(row_ws, tmp_path / "out", monkeypatch, **_row_cache_opts(row_own_cache))
    why = "truncated" if how == "truncate" else "checksum"
    assert spy.said(f"cache {path} is unusable") and spy.said(why) and spy.said("computed 33 train rows")
    assert spy.forwards == ROW_TRAIN_FORWARDS  # the eval file was whole
    assert read_cache(path, cache_header(path)["key"], "train", [4] * 33).num_rows == 33  # rewritten whole
    assert logged_metrics(tmp_path / "out") == logged_metrics(row_cached_run[0])


def test_group_resume_uses_the_cache_and_checks_its_key(
    row_ws, row_cached_run, tmp_path, monkeypatch
) -> None:
    full, cache, _ = row_cached_run
    split = tmp_path / "split"
    with monkeypatch.context() as patch:
        _crash_after_checkpoint(patch, step=2)
        with pytest.raises(KeyboardInterrupt):
            runner.train(toy_config(row_ws, split, **ROW_RUN, **_row_cache_opts(cache)))
    spy = _train_rows(row_ws, split, monkeypatch, **_row_cache_opts(cache))
    assert spy.said("reusing cache") and spy.forwards == 0
    assert logged_metrics(split) == logged_metrics(full)

    changed = tmp_path / "changed"
    shutil.copytree(split / "checkpoints" / "step-00000002", changed / "checkpoints" / "step-00000002")
    rows = _k4_rows(33, seed=1)
    rows[0]["responses"][3] += " yes"
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ConfigError, match=r"ckpt\.resume: .* the tokenised training data changed since"):
        runner.train(
            toy_config({**row_ws, "train": str(train)}, changed, **ROW_RUN, **_row_cache_opts(cache))
        )


def test_data_groups_is_an_ignored_key_that_changes_no_store_cache_or_number(
    row_ws, tmp_path, monkeypatch
) -> None:
    pairs = {**row_ws, "train": row_ws["pair_train"], "eval": row_ws["pair_eval"]}
    cache = tmp_path / "cache"
    pair_opts = {"train.max_steps": 2, "train.eval_steps": 2, "ckpt.save_steps": 2, **_row_cache_opts(cache)}
    first = _train_rows(pairs, tmp_path / "pairs", monkeypatch, **pair_opts, **{"data.groups": False})
    assert first.said("computed 16 train rows") and first.said("computed 8 eval rows")
    assert not first.said("data.groups is ignored")
    spy = _train_rows(pairs, tmp_path / "groups", monkeypatch, **pair_opts, **{"data.groups": True})
    assert sum("reusing cache" in line for line in spy.lines) == 2 and spy.forwards == 0
    assert spy.said("note: data.groups is ignored")
    for want, got in zip(
        logged_metrics(tmp_path / "pairs"), logged_metrics(tmp_path / "groups"), strict=True
    ):
        key = "eval/loss" if "eval/loss" in want else "loss"
        assert got[key] == pytest.approx(want[key], rel=1e-6), (want["step"], key)


@pytest.mark.slow
@pytest.mark.equivalence
def test_two_ddp_processes_precompute_groups_as_one(row_ws, row_live_run, row_cached_run, tmp_path) -> None:
    out = tmp_path / "ddp"
    opts = {**ROW_RUN, "ref.precompute": "true"}
    result = launch(train_args(TORCHRUN, row_ws, out, "ddp", opts))
    assert result.stdout.count("reference log-probs: computed") == 2  # rank 0 logs, once per split
    assert_same_metrics(row_live_run, out, atol=1e-6)
    assert_same_cache_files(
        row_cached_run[1], out / "ref_cache", width=4
    )  # rank 0 wrote what one process writes
    assert logged_metrics(out)[-1]["step"] == 4
