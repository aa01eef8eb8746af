"""End-to-end trainer behaviour on a tiny model: accumulation, resume, reference, metrics, export."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from preftune import DPOTrainer, SingleProcessStrategy
from preftune.model.loading import load_model, load_tokenizer
from preftune.training import runner
from toy_env import (
    assert_close_weights,
    assert_same_metrics,
    fit_recording_grads,
    load_weights,
    logged_metrics,
    toy_config,
    toy_workspace,
)


@pytest.mark.equivalence
def test_first_step_with_policy_equal_reference_is_ln2(ws, tmp_path) -> None:
    runner.train(toy_config(ws, tmp_path, **{"train.max_steps": 1}))
    first = logged_metrics(tmp_path)[0]
    assert first["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert first["rewards/chosen"] == 0 and first["rewards/rejected"] == 0
    assert first["rewards/accuracies"] == 0  # every margin is a tie, and ties count as wrong


@pytest.mark.equivalence
def test_accumulation_equals_one_big_batch(ws, tmp_path) -> None:
    # Adam's eps is raised so the comparison of weights is not dominated by Adam turning gradients at
    # float-rounding level (|g| ~ 1e-8, where fp32 sums in another order differ) into full-size steps.
    common = {"train.batch_size": 8, "train.max_steps": 2, "data.shuffle": False, "optim.adam_eps": 1e-3}
    big_cfg = toy_config(ws, tmp_path / "big", **{**common, "train.micro_batch_size": 8})
    small_cfg = toy_config(ws, tmp_path / "small", **{**common, "train.micro_batch_size": 2})
    big, small = fit_recording_grads(big_cfg)[1], fit_recording_grads(small_cfg)[1]
    assert len(big) == len(small) == 2
    for g_big, g_small in zip(big, small, strict=True):
        assert_close_weights(g_big, g_small, rtol=1e-5, atol=1e-7)
    assert_close_weights(
        load_weights(tmp_path / "big" / "final"),
        load_weights(tmp_path / "small" / "final"),
        rtol=1e-5,
        atol=1e-6,
    )
    # the default layout lays a micro-batch in one row, so the two micro-batch sizes group pairs differently
    assert_same_metrics(tmp_path / "small", tmp_path / "big", atol=1e-6)


def _crash_after_checkpoint(monkeypatch, step: int) -> None:
    """Make training stop (as a kill would) right after the checkpoint of ``step`` is written."""
    real_save = DPOTrainer.save_checkpoint

    def crash(self, args, consumed):
        path = real_save(self, args, consumed)
        if self.global_step == step:
            raise KeyboardInterrupt("simulated stop")
        return path

    monkeypatch.setattr(DPOTrainer, "save_checkpoint", crash)


@pytest.mark.equivalence
def test_stop_and_resume_equals_uninterrupted(ws, tmp_path, monkeypatch) -> None:
    opts = {"ckpt.save_steps": 2, "train.max_epochs": 2, "train.eval_steps": 2}
    runner.train(toy_config(ws, tmp_path / "full", **opts))

    with monkeypatch.context() as patch:
        _crash_after_checkpoint(patch, step=4)
        with pytest.raises(KeyboardInterrupt):
            runner.train(toy_config(ws, tmp_path / "split", **opts))
    assert not (tmp_path / "split" / "final").exists()
    runner.train(toy_config(ws, tmp_path / "split", **opts))

    assert_close_weights(
        load_weights(tmp_path / "full" / "final"),
        load_weights(tmp_path / "split" / "final"),
        rtol=1e-6,
        atol=1e-6,
    )
    assert logged_metrics(tmp_path / "full") == logged_metrics(tmp_path / "split")


def test_checkpoint_rotation_and_incomplete_ignored(ws, tmp_path) -> None:
    out = tmp_path / "rot"
    runner.train(toy_config(ws, out, **{"ckpt.save_steps": 1, "ckpt.keep": 2, "ckpt.save_hf": True}))
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step-00000005", "step-00000006"]  # 48 rows / batch 8 = 6 steps, newest two kept
    assert (out / "checkpoints" / "step-00000006" / "hf" / "config.json").is_file()
    # A half-written checkpoint (no trainer state) must never be taken as the latest.
    (out / "checkpoints" / "step-00000009").mkdir()
    cfg = toy_config(ws, out)
    assert runner.resume_point(cfg) == out / "checkpoints" / "step-00000006"


def test_reference_stays_frozen_and_outside_optimizer(ws, tmp_path) -> None:
    cfg = toy_config(ws, tmp_path, **{"train.max_steps": 2})
    trainer, steps = runner.build_trainer(cfg)
    ref_scorer = trainer.reference.scorer
    before = {k: v.clone() for k, v in ref_scorer.state_dict().items()}
    trainer.fit(cfg, 0, steps)
    assert not ref_scorer.training and all(not p.requires_grad for p in ref_scorer.parameters())
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not opt_params & {id(p) for p in ref_scorer.parameters()}
    for key, value in ref_scorer.state_dict().items():
        assert torch.equal(value, before[key])
    policy_changed = any(
        not torch.equal(p, before[k]) for k, p in trainer.scorer.state_dict().items() if k in before
    )
    assert policy_changed


def test_metrics_keys_and_final_export_loads(ws, tmp_path) -> None:
    final = runner.train(toy_config(ws, tmp_path, **{"loss.nll_coef": 0.5}))
    rows = logged_metrics(tmp_path)
    train_row = next(r for r in rows if "loss" in r)
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected", "nll", "lr", "grad_norm", "tokens", "epoch", "step",
                "consumed_samples"):  # fmt: skip
        assert key in train_row, key
    assert train_row["consumed_samples"] == 8 and train_row["tokens"] > 0
    assert any("eval/loss" in r for r in rows)
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "data_report.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(final)
    exported = load_weights(final)
    for name, param in model.state_dict().items():
        assert torch.equal(param, exported[name])
    assert (final / "tokenizer.json").is_file()


@pytest.mark.equivalence
def test_eval_metrics_are_exact_over_batch_sizes(ws, tmp_path) -> None:
    results = []
    for size in (1, 3, 16):
        cfg = toy_config(ws, tmp_path / str(size), **{"train.eval_micro_batch_size": size})
        trainer, _ = runner.build_trainer(cfg, need_train=False)
        trainer.scorer.model.lm_head.weight.data.mul_(1.5)  # policy != reference so values are not trivial
        results.append(trainer.evaluate())
    for other in results[1:]:
        for key, value in results[0].items():
            assert other[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key  # abs: see above


def test_reference_free_loss_trains_without_reference(ws, tmp_path) -> None:
    cfg = toy_config(ws, tmp_path, **{"loss.type": "simpo", "train.max_steps": 2})
    trainer, steps = runner.build_trainer(cfg)
    assert trainer.reference is None
    trainer.fit(cfg, 0, steps)
    assert math.isfinite(logged_metrics(tmp_path)[0]["loss"])


def test_trainer_refuses_missing_reference(ws, tmp_path) -> None:
    cfg = toy_config(ws, tmp_path)
    model = load_model(ws["model"], cfg.model)
    tok = load_tokenizer(ws["model"])
    with pytest.raises(ValueError, match="needs a reference model"):
        DPOTrainer(model, None, SingleProcessStrategy("cpu"), tok, None, None, None, None)


def test_resume_mid_epoch_when_epoch_is_not_a_multiple_of_the_batch(tmp_path, monkeypatch) -> None:
    ws = toy_workspace(tmp_path / "ws", n_train=50)  # 50 pairs, batch 8: 6 steps per epoch, 2 pairs left over
    opts = {"ckpt.save_steps": 1, "train.max_epochs": 3}
    runner.train(toy_config(ws, tmp_path / "full", **opts))
    with monkeypatch.context() as patch:
        _crash_after_checkpoint(patch, step=8)  # two steps into the second epoch
        with pytest.raises(KeyboardInterrupt):
            runner.train(toy_config(ws, tmp_path / "split", **opts))
    runner.train(toy_config(ws, tmp_path / "split", **opts))
    assert_close_weights(
        load_weights(tmp_path / "full" / "final"),
        load_weights(tmp_path / "split" / "final"),
        rtol=1e-6,
        atol=1e-6,
    )
    assert logged_metrics(tmp_path / "full") == logged_metrics(tmp_path / "split")
    assert [r["consumed_samples"] for r in logged_metrics(tmp_path / "split") if "loss" in r][-1] == 18 * 8


@pytest.mark.equivalence
@pytest.mark.parametrize("layout", ["packed", "prefix_shared"])
def test_segment_layouts_train_like_padded(ws, tmp_path, layout: str) -> None:
    opts = {"train.max_steps": 3, "data.shuffle": False, "optim.adam_eps": 1e-3, "train.eval_at_start": True}
    padded = runner.train(toy_config(ws, tmp_path / "padded", **{**opts, "train.layout": "padded"}))
    fast = runner.train(toy_config(ws, tmp_path / layout, **{**opts, "train.layout": layout}))
    assert_close_weights(load_weights(padded), load_weights(fast), rtol=1e-5, atol=1e-6)
    assert_same_metrics(tmp_path / "padded", tmp_path / layout, atol=1e-6)
