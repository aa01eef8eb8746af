"""Trainer options: gradient checkpointing, MoE auxiliary loss, TensorBoard and W&B sinks, eval at start."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

from preftune.toy import build_toy_tokenizer, toy_corpus
from preftune.training import runner
from toy_env import toy_config, toy_workspace


def _first_step_grads(cfg) -> tuple[dict[str, torch.Tensor], int]:
    """Gradients of the first micro-batch, and how many tensors autograd saved for backward."""
    trainer, _ = runner.build_trainer(cfg)
    trainer.scorer.train()  # checkpointing is only active in training mode
    saved = []

    def count(tensor):
        saved.append(1)
        return tensor

    batch = next(iter(trainer.train_dataloader))
    with torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
        objective, *_ = trainer.micro_batch_losses(batch, training=True)
    objective.backward()
    grads = {n: p.grad.clone() for n, p in trainer.scorer.named_parameters() if p.grad is not None}
    return grads, len(saved)


def test_gradient_checkpointing_gives_the_same_gradients(ws, tmp_path) -> None:
    plain, plain_saved = _first_step_grads(toy_config(ws, tmp_path / "a", **{"data.shuffle": False}))
    ckpt, ckpt_saved = _first_step_grads(
        toy_config(ws, tmp_path / "b", **{"data.shuffle": False, "model.gradient_checkpointing": True})
    )
    assert ckpt_saved < plain_saved / 2  # layer activations are recomputed, not kept: checkpointing is on
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], ckpt[name], rtol=1e-5, atol=1e-7, msg=name)


def test_moe_aux_loss_enters_the_objective(tmp_path) -> None:
    from preftune.toy import build_toy_model

    tok = build_toy_tokenizer(toy_corpus())
    model_dir = tmp_path / "moe"
    build_toy_model(len(tok), arch="mixtral").save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    ws = toy_workspace(tmp_path / "data")
    ws["model"] = str(model_dir)
    values = {}
    for coef in (0.0, 0.5):
        trainer, _ = runner.build_trainer(
            toy_config(ws, tmp_path / f"o{coef}", **{"loss.aux_loss_coef": coef})
        )
        batch = next(iter(trainer.eval_dataloader))
        losses = trainer.micro_batch_losses(batch, training=False)
        values[coef] = (
            float(losses.objective.detach()),
            float(losses.per_row.detach().mean()),
            losses.aux_loss,
        )
    assert values[0.0][2] is None
    aux = float(values[0.5][2].detach())
    assert aux > 0
    assert values[0.5][0] == pytest.approx(values[0.5][1] + 0.5 * aux, rel=1e-6)
    assert values[0.0][0] == pytest.approx(values[0.0][1], rel=1e-6)


def test_tensorboard_and_wandb_sinks(ws, tmp_path, monkeypatch) -> None:
    logged: list[tuple[dict, int]] = []

    class FakeRun:
        def log(self, metrics, step):
            logged.append((metrics, step))

        def finish(self):
            logged.append(({"finished": True}, -1))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: FakeRun()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = toy_config(ws, tmp_path, **{"log.tensorboard": True, "log.wandb": True, "train.max_steps": 2})
    runner.train(cfg)
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    steps = [step for metrics, step in logged if "loss" in metrics]
    assert steps == [1, 2] and logged[-1][0] == {"finished": True}


def test_eval_at_start_logs_step_zero(ws, tmp_path) -> None:
    runner.train(toy_config(ws, tmp_path, **{"train.eval_at_start": True, "train.max_steps": 1}))
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["eval/loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert first["eval/rewards/accuracies"] == 0.0


def test_bfloat16_run_trains_with_finite_metrics(ws, tmp_path) -> None:
    runner.train(toy_config(ws, tmp_path, **{"model.dtype": "bfloat16", "train.max_steps": 2}))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert len(train_rows) == 2 and all(
        math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in train_rows
    )
    assert train_rows[1]["loss"] != train_rows[0]["loss"]  # the bf16 weights did move


def test_checkpoint_carries_the_resolved_config(ws, tmp_path) -> None:
    runner.train(toy_config(ws, tmp_path, **{"ckpt.save_steps": 3, "loss.beta": 0.25}))
    state = json.loads((tmp_path / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert state["config"]["loss"]["beta"] == 0.25
    assert state["global_step"] == 6 and state["consumed_samples"] == 48
