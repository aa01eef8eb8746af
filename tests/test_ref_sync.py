"""TR-DPO (ref.sync_steps, ref.sync_alpha): the reference's soft update on one process, its closed form,
LoRA's dense deltas, resume exactness and the refusals. The multi-process runs are in test_ref_sync_dist.py."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from preftune import DPOTrainer
from preftune.config import ConfigError
from preftune.data import Row
from preftune.errors import CheckpointError
from preftune.layouts import Batch
from preftune.model.loading import load_model
from preftune.model.scorer import SequenceScorer
from preftune.strategy import SingleProcessStrategy
from preftune.toy import write_toy_model_dir
from preftune.training import runner
from test_distributed import _resume_copy
from toy_env import (
    assert_close_weights,
    load_weights,
    logged_metrics,
    reference_pairs,
    score_pairs,
    toy_config,
)

LORA = {"lora.rank": 8, "lora.alpha": 16, "optim.lr": 1e-2}


WORKSPACE = {"n_train": 48}  # the sizes of this module's `ws` (tests/conftest.py)


def _random_batch(trainer: DPOTrainer, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    vocab = trainer.model.config.vocab_size  # type: ignore[union-attr]

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=gen).tolist()

    pairs = [Row.pair(ids(3 + i), ids(2 + 2 * i), ids(7 - i), "random", i) for i in range(4)]
    return trainer.layout.collate(pairs)


@pytest.mark.parametrize("kind", ["policy_start", "model"])
def test_sync_mixes_every_reference_parameter_at_every_nth_step(ws, tmp_path, kind) -> None:
    """After the optimizer step of steps 2 and 4 (sync_steps 2), every reference parameter is
    0.4 x reference before + 0.6 x policy after the update; at steps 1 and 3 it is untouched."""
    extra = {"ref.name_or_path": ws["model"]} if kind == "model" else {}
    cfg = toy_config(
        ws, tmp_path, **{"ref.sync_steps": 2, "ref.sync_alpha": 0.6, "train.max_steps": 4}, **extra
    )
    trainer, steps = runner.build_trainer(cfg, log=lambda *_: None)
    reference = trainer.reference
    ref = dict(reference.scorer.named_parameters())  # type: ignore[union-attr]
    policy = dict(trainer.scorer.named_parameters())
    start = {n: p.detach().clone() for n, p in ref.items()}
    before: dict[str, torch.Tensor] = {}
    checked = []

    def snapshot(_: DPOTrainer) -> None:  # gradients ready, optimizer step not taken yet
        before.update({n: p.detach().clone() for n, p in ref.items()})

    def check(_: DPOTrainer, result) -> None:  # runs after the trainer's sync hook
        for name, param in ref.items():
            if result.step % 2:
                assert torch.equal(param, before[name]), (result.step, name)
                continue
            # TRL's order of operations, bit for bit, and the formula itself to float32 rounding.
            assert torch.equal(param, before[name].mul(0.4).add(policy[name].detach(), alpha=0.6)), name
            want = 0.6 * policy[name].detach() + 0.4 * before[name]
            torch.testing.assert_close(param, want, rtol=1e-6, atol=1e-7)
        checked.append(result.step)

    trainer.on_gradients.append(snapshot)
    trainer.on_step_end.append(check)
    trainer.fit(cfg, 0, steps)
    assert checked == [1, 2, 3, 4]
    moved = max((ref[n] - start[n]).abs().max().item() for n in ref)
    apart = max((ref[n] - policy[n].detach()).abs().max().item() for n in ref)
    assert moved > 1e-4 and apart > 1e-5  # the reference moved, and not all the way to the policy


def test_lora_reference_is_base_plus_dense_delta(ws, tmp_path) -> None:
    """With LoRA, each adapted layer's delta follows D <- a x (scale B A) + (1 - a) x D, and the reference's
    forward equals a plain dense model whose weights are W + D."""
    cfg = toy_config(
        ws, tmp_path, **LORA, **{"ref.sync_steps": 1, "ref.sync_alpha": 0.6, "train.max_steps": 3}
    )
    trainer, steps = runner.build_trainer(cfg, log=lambda *_: None)
    deltas = trainer.reference.deltas  # type: ignore[union-attr]
    expected: dict[str, torch.Tensor] = {}

    def track(tr: DPOTrainer, result) -> None:
        for name, layer in deltas.layers.items():
            update = layer.get_delta_weight("default").detach()
            expected[name] = 0.6 * update + 0.4 * expected.get(name, torch.zeros_like(update))

    trainer.on_step_end.append(track)
    trainer.fit(cfg, 0, steps)
    assert expected and deltas.deltas.keys() == expected.keys()
    for name, delta in deltas.deltas.items():
        torch.testing.assert_close(delta, expected[name], rtol=1e-6, atol=1e-9)
        assert delta.abs().max() > 1e-5, name

    dense = load_model(ws["model"], cfg.model)
    with torch.no_grad():
        for name, delta in expected.items():
            dense.get_submodule(name.removeprefix("base_model.model.")).weight += delta  # type: ignore[operator]
    batch = _random_batch(trainer)
    got = reference_pairs(trainer.reference, batch)  # type: ignore[union-attr]
    with torch.no_grad():
        want = score_pairs(SequenceScorer(dense.eval()), batch)
        with trainer.model.disable_adapter():  # type: ignore[operator]
            base = score_pairs(SequenceScorer(trainer.model).eval(), batch)
    torch.testing.assert_close(got.chosen_logps, want.chosen_logps, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got.rejected_logps, want.rejected_logps, rtol=1e-6, atol=1e-5)
    assert (got.chosen_logps - base.chosen_logps).abs().max() > 1e-3  # the reference did move off the base


@pytest.mark.parametrize("lora", [False, True])
def test_hard_copy_every_step_gives_zero_rewards(ws, tmp_path, lora) -> None:
    """Alpha 1 every step: each step's forward sees reference == policy (the policy of the step before), so the
    sigmoid loss is ln 2 and every reward 0 at every step, while the policy's log-probs keep moving; without
    the sync the same run's rewards leave 0 after the first step."""
    opts = {**(LORA if lora else {}), "train.max_steps": 4}
    synced, plain = tmp_path / "synced", tmp_path / "plain"
    runner.train(toy_config(ws, synced, **opts, **{"ref.sync_steps": 1, "ref.sync_alpha": 1.0}))
    runner.train(toy_config(ws, plain, **opts))
    rows = [r for r in logged_metrics(synced) if "loss" in r]
    assert len(rows) == 4 and len({r["logps/chosen"] for r in rows}) == 4
    for row in rows:
        assert row["loss"] == pytest.approx(math.log(2), abs=1e-6), row["step"]
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
            assert row[key] == pytest.approx(0.0, abs=1e-6), (row["step"], key)
    last_eval = [r for r in logged_metrics(synced) if "eval/loss" in r][-1]
    assert last_eval["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)
    unsynced = [r for r in logged_metrics(plain) if "loss" in r]
    assert abs(unsynced[-1]["rewards/margins"]) > 1e-5


RESUME = {
    "ref.sync_steps": 2,
    "ref.sync_alpha": 0.6,
    "train.max_steps": 6,
    "ckpt.save_steps": 1,
    "ckpt.keep": 6,
}


@pytest.fixture(scope="module", params=[False, True], ids=["full", "lora"])
def uninterrupted(request, ws, tmp_path_factory) -> tuple[dict, Path]:
    opts = {**RESUME, **(LORA if request.param else {})}
    out = tmp_path_factory.mktemp("uninterrupted")
    runner.train(toy_config(ws, out, **opts))
    return opts, out


@pytest.mark.parametrize("stop_after", [3, 4])
def test_resumed_run_equals_uninterrupted(ws, uninterrupted, tmp_path, stop_after) -> None:
    """Stopped after step 3 (a sync behind it, one ahead) or 4 (just synced) and resumed: the same metrics and
    final weights as the run that never stopped; the checkpoints carry the moved reference."""
    opts, full = uninterrupted
    assert (full / "checkpoints" / "step-00000002" / "reference").is_dir()
    assert not (full / "checkpoints" / "step-00000001" / "reference").exists()  # still the starting weights
    resumed = tmp_path / "resumed"
    _resume_copy(full, resumed, stop_after)
    runner.train(toy_config(ws, resumed, **opts))
    assert_close_weights(load_weights(full / "final"), load_weights(resumed / "final"), rtol=1e-6, atol=1e-7)
    assert logged_metrics(full) == logged_metrics(resumed)


def test_resume_without_the_saved_reference_is_refused(ws, uninterrupted, tmp_path) -> None:
    opts, full = uninterrupted
    resumed = tmp_path / "resumed"
    _resume_copy(full, resumed, 3)
    shutil.rmtree(resumed / "checkpoints" / "step-00000003" / "reference")
    with pytest.raises(CheckpointError, match=r"no synced reference .*ref\.sync_steps 2"):
        runner.train(toy_config(ws, resumed, **opts))


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"ref.precompute": True}, r"^ref\.precompute: with ref\.sync_steps 2 .* stale"),
        ({"loss.type": "simpo"}, r"^ref\.sync_steps: loss\.type 'simpo' is reference-free"),
        ({"ref.sync_alpha": 0.0}, r"^ref\.sync_alpha: must be in \(0, 1\]"),
        ({"ref.sync_alpha": 1.5}, r"^ref\.sync_alpha: must be in \(0, 1\]"),
        ({"ref.sync_steps": -1}, r"^ref\.sync_steps: must be >= 0"),
        ({**LORA, "strategy.name": "fsdp2"}, r"^strategy\.name: LoRA runs with single or ddp"),
    ],
)
def test_refusals_before_any_model_loads(tmp_path, opts, match) -> None:
    ws = {"model": str(tmp_path / "absent"), "train": "t.jsonl", "eval": "e.jsonl"}
    with pytest.raises(ConfigError, match=match):  # config loading validates: before anything is built
        toy_config(ws, tmp_path / "out", **{"ref.sync_steps": 2, **opts})


def test_lora_deltas_need_single_or_ddp_even_when_asked_directly(tmp_path) -> None:
    from preftune.reference.plan import plan_reference

    ws = {"model": "m", "train": "t.jsonl", "eval": "e.jsonl"}
    cfg = toy_config(ws, tmp_path, **{"ref.sync_steps": 2, "strategy.name": "deepspeed"})
    cfg.lora.rank = 8  # past LoRA's own strategy check, which validation runs first
    with pytest.raises(ConfigError, match=r"^ref\.sync_steps: with lora\.rank > 0 .* not deepspeed"):
        plan_reference(cfg)


def test_reference_of_another_shape_is_refused_before_training(ws, tmp_path) -> None:
    other = write_toy_model_dir(tmp_path / "wider", hidden_size=48)
    cfg = toy_config(ws, tmp_path / "out", **{"ref.sync_steps": 2, "ref.name_or_path": str(other)})
    with pytest.raises(ValueError, match=r"ref\.sync_steps: the reference cannot be mixed with the policy"):
        runner.build_trainer(cfg, log=lambda *_: None)


def test_hand_built_trainer_without_a_live_reference_is_refused(ws) -> None:
    from preftune.model.loading import load_tokenizer
    from preftune.reference.cache import CachedReference

    model = load_model(ws["model"], toy_config(ws, Path("unused")).model)
    tokenizer = load_tokenizer(ws["model"], False)
    cached = CachedReference.__new__(CachedReference)  # a precomputed table: nothing to move
    with pytest.raises(ValueError, match=r"ref\.sync_steps needs a live reference .*CachedReference"):
        DPOTrainer(
            model, None, SingleProcessStrategy("cpu"), tokenizer, None, None, None, None,
            reference=cached, ref_sync_steps=2,
        )  # fmt: skip
