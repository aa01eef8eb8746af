"""``ref.precompute`` end to end on the toy model: same training as the live reference, reuse, invalidation,
the reference freed, resume, a damaged cache, DDP / FSDP2 with 2 processes, and the CLI."""

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
    load_weights,
    logged_metrics,
    toy_config,
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

        for method in ("pair_logps", "response_logps"):  # pair batches, prompt-group batches
            monkeypatch.setattr(ModelReference, method, self._counted(getattr(ModelReference, method)))
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


def _train(ws: dict[str, str], out: Path, monkeypatch: pytest.MonkeyPatch, **opts: Any) -> Spy:
    return spied_train(toy_config(ws, out, **{**RUN, **opts}), monkeypatch)


def _assert_same_run(a: Path, b: Path, rtol: float = 1e-5) -> None:
    assert_same_metrics(a, b, atol=1e-7, rtol=rtol)
    assert_close_weights(load_weights(a / "final"), load_weights(b / "final"), rtol=rtol, atol=1e-6)


@pytest.fixture(scope="module")
def plain_run(ws, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    runner.train(toy_config(ws, out, **RUN))
    return out


@pytest.fixture(scope="module")
def cached_run(ws, tmp_path_factory) -> tuple[Path, Path, Spy]:
    out = tmp_path_factory.mktemp("cached")
    with pytest.MonkeyPatch.context() as patch:
        spy = _train(ws, out, patch, **{"ref.precompute": True})
    return out, out / "ref_cache", spy


@pytest.fixture
def own_cache(cached_run, tmp_path) -> Path:
    """A copy of the first run's cache, for a test that adds files to it or damages it."""
    return shutil.copytree(cached_run[1], tmp_path / "own_cache")


@pytest.mark.equivalence
def test_precompute_trains_like_the_live_reference(plain_run, cached_run) -> None:
    out, cache, spy = cached_run
    assert spy.said("computed 49 train pairs") and spy.said("computed 16 eval pairs")
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
    assert spy.said("computed 49 train pairs") and spy.said("reusing cache")  # eval is unchanged
    assert spy.forwards == 49


def test_one_changed_reference_weight_recomputes(ws, own_cache, tmp_path, monkeypatch) -> None:
    cache = own_cache
    ref = AutoModelForCausalLM.from_pretrained(ws["model"], dtype=torch.float32)
    with torch.no_grad():
        ref.model.layers[0].self_attn.v_proj.weight[1, 2] += 1e-3
    ref.save_pretrained(tmp_path / "ref")
    opts = {"ref.precompute": True, "ref.cache_dir": str(cache), "ref.name_or_path": str(tmp_path / "ref")}
    spy = _train(ws, tmp_path / "out", monkeypatch, **opts)
    assert spy.said("computed 49 train pairs") and spy.said("computed 16 eval pairs")
    assert not spy.said("reusing cache")
    assert len(list(cache.glob("train-*"))) == 2  # the other reference's file stays for the runs that use it


def test_reference_is_freed_before_training(ws, tmp_path, monkeypatch) -> None:
    checked: list[bool] = []
    real = CachedReference.pair_logps

    def check(ref: CachedReference, batch: Any) -> Any:
        if not checked:
            gc.collect()
            policy, *others = spy.loaded
            checked.append(policy() is not None and len(others) == 1 and others[0]() is None)
        return real(ref, batch)

    monkeypatch.setattr(CachedReference, "pair_logps", check)
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
    assert spy.said(f"cache {path} is unusable") and spy.said(why) and spy.said("computed 49 train pairs")
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
