"""The reference plan decided once from the config, a user's registered loss chosen from the config, the trainer's
beta rule, and the public train step with its hooks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from preftune import DPOTrainer, SingleProcessStrategy
from preftune.config import ConfigError, LossConfig, load_config
from preftune.losses import LOSSES, LossOutput, register_loss
from preftune.model.loading import load_model, load_tokenizer
from preftune.reference import ReferencePlan, plan_reference
from preftune.training import runner
from preftune.training.trainer import StepResult
from toy_env import checked_config, logged_metrics, toy_config

WORKSPACE = {"n_train": 16, "n_eval": 8}  # the sizes of this module's `ws` (tests/conftest.py)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, ReferencePlan("policy_start", "pol")),
        ({"ref.name_or_path": "ref", "ref.offload": "true"}, ReferencePlan("model", "ref", offload=True)),
        ({"loss.type": "simpo"}, ReferencePlan("none")),
        ({"lora.rank": "4"}, ReferencePlan("adapters_off")),
        ({"ref.precompute": "true"}, ReferencePlan("policy_start", "pol", True, Path("out/ref_cache"))),
        (
            {"lora.rank": "4", "ref.precompute": "true", "ref.cache_dir": "shared"},
            ReferencePlan("adapters_off", precompute=True, cache_dir=Path("shared")),
        ),
    ],
)
def test_each_config_gives_one_plan(overrides, expected) -> None:
    cfg = load_config(None, {"model.name_or_path": "pol", "output_dir": "out", **overrides})
    plan = plan_reference(cfg)
    assert plan == expected
    assert plan.loads_model == (expected.kind in ("model", "policy_start"))


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            {"lora.rank": "4", "ref.offload": "true"},
            "ref.offload: with lora.rank > 0 there is no reference copy",
        ),
        (
            {"lora.rank": "4", "ref.name_or_path": "r"},
            "ref.name_or_path: with lora.rank > 0 the reference is",
        ),
        ({"loss.type": "orpo", "ref.precompute": "true"}, "ref.precompute: loss 'orpo' is reference-free"),
    ],
)
def test_impossible_references_are_refused_by_the_config(overrides, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        checked_config(None, overrides)


def test_a_registered_loss_is_chosen_from_the_config(ws, tmp_path) -> None:
    @register_loss("test_user_nll_only", reference_free=True, reports_nll=True)
    def nll_only(x, cfg, state) -> LossOutput:
        """loss = -pc / lc: the chosen response's per-token NLL, no reference."""
        nll = -x.policy_chosen / x.chosen_tokens.clamp(min=1)
        return LossOutput(nll, torch.zeros_like(nll), torch.zeros_like(nll))

    try:
        cfg = toy_config(ws, tmp_path, **{"loss.type": "test_user_nll_only", "train.max_steps": 1})
        assert plan_reference(cfg).kind == "none"  # the registry entry says: no reference
        trainer, steps = runner.build_trainer(cfg)
        assert trainer.reference is None
        trainer.fit(cfg, 0, steps)
        first = logged_metrics(tmp_path)[0]
        assert first["nll"] == pytest.approx(first["loss"], rel=1e-6)  # reported, though loss.nll_coef is 0
    finally:
        LOSSES.pop("test_user_nll_only")
    with pytest.raises(ConfigError, match=r"loss\.type: unknown loss 'test_user_nll_only'"):
        checked_config(None, {"loss.type": "test_user_nll_only"})


def _bare_trainer(ws, **kwargs) -> DPOTrainer:
    cfg = load_config(None, {"model.name_or_path": ws["model"]})
    policy, ref = load_model(ws["model"], cfg.model), load_model(ws["model"], cfg.model)
    tok = load_tokenizer(ws["model"])
    return DPOTrainer(policy, ref, SingleProcessStrategy("cpu"), tok, None, None, None, None, **kwargs)


def test_beta_and_loss_config_beta_never_silently_disagree(ws) -> None:
    with pytest.raises(ValueError, match=r"beta=0.01 and loss_config.beta=0.5 disagree"):
        _bare_trainer(ws, beta=0.01, loss_config=LossConfig(beta=0.5))
    assert _bare_trainer(ws, loss_config=LossConfig(beta=0.5)).loss_config.beta == 0.5
    assert _bare_trainer(ws, beta=0.2, loss_config=LossConfig(beta=0.2)).loss_config.beta == 0.2
    assert _bare_trainer(ws, beta=0.3).loss_config.beta == 0.3
    assert _bare_trainer(ws).loss_config.beta == 0.01  # OpenRLHF's default


@pytest.mark.parametrize(
    ("loss_config", "needle"),
    [
        (LossConfig(beta=-1.0), "loss.beta: must be > 0, got -1.0"),
        (LossConfig(type="nope"), "loss.type: unknown loss 'nope'"),
        (LossConfig(beta=float("nan")), "loss.beta: must be a finite number"),
        (
            LossConfig(type="sigmoid,plackett_luce"),
            "a listwise loss scores whole prompt groups and cannot be part",
        ),
    ],
)
def test_a_hand_built_trainer_checks_its_loss_config_as_the_cli_does(ws, loss_config, needle) -> None:
    with pytest.raises(ConfigError) as info:
        _bare_trainer(ws, loss_config=loss_config)
    assert needle in str(info.value)
    with pytest.raises(ConfigError) as info:  # the same words from the command line's checks
        checked_config(None, {"loss.type": loss_config.type, "loss.beta": str(loss_config.beta)})
    assert needle in str(info.value)


def test_train_step_is_public_and_hooks_see_every_step(ws, tmp_path) -> None:
    cfg = toy_config(ws, tmp_path, **{"train.micro_batch_size": 4, "train.batch_size": 8})
    trainer, _ = runner.build_trainer(cfg)
    seen: list[tuple[str, int]] = []
    trainer.on_gradients.append(lambda t: seen.append(("gradients", t.global_step)))
    trainer.on_step_end.append(lambda t, result: seen.append(("end", result.step)))
    batches = iter(trainer.train_dataloader)
    with pytest.raises(ValueError, match="a step takes at least one micro-batch"):
        trainer.train_step([])
    trainer.scorer.train()
    result = trainer.train_step([next(batches), next(batches)])
    assert isinstance(result, StepResult) and result.step == trainer.global_step == 1
    assert result.stats.sums["pairs"] == 8 and math.isfinite(result.grad_norm) and not result.skipped
    assert result.lr == pytest.approx(1e-3)  # the one warm-up step (ceil(0.03 x 2 steps)) runs at the peak
    assert seen == [("gradients", 0), ("end", 1)]
