"""LoRA: the adapter-disabled policy as the reference, adapter-only training, resume, export, DDP parity."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from torch.distributed.checkpoint import FileSystemReader
from transformers import AutoModelForCausalLM

from launch import TORCHRUN, launch, run_cli, train_args
from preftune.config import ConfigError
from preftune.data import Row
from preftune.layouts import Batch
from preftune.model.loading import load_model
from preftune.model.scorer import SequenceScorer
from preftune.reference.sources import AdapterDisabledReference
from preftune.toy import write_toy_model_dir
from preftune.training import runner
from test_trainer import _crash_after_checkpoint
from toy_env import (
    assert_close_weights,
    assert_same_metrics,
    checked_config,
    fit_recording_grads,
    load_weights,
    logged_metrics,
    reference_pairs,
    score_pairs,
    toy_config,
)

LORA = {"lora.rank": 8, "lora.alpha": 16, "optim.lr": 1e-2}


def _random_batch(trainer, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    vocab = trainer.model.config.vocab_size

    def ids(n: int) -> list[int]:
        return torch.randint(3, vocab, (n,), generator=gen).tolist()

    pairs = [Row.pair(ids(3 + i), ids(2 + 2 * i), ids(7 - i), "random", i) for i in range(4)]
    return trainer.layout.collate(pairs)


def _randomise_adapters(model: torch.nn.Module) -> None:
    """Non-zero B matrices, so the adapted policy really differs from the base model."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.5 * torch.randn(param.shape, generator=gen))


def test_reference_is_the_base_model_and_policy_uses_the_adapters(ws, tmp_path) -> None:
    cfg = toy_config(ws, tmp_path, **LORA)
    trainer, _ = runner.build_trainer(cfg, need_train=False)
    assert isinstance(trainer.reference, AdapterDisabledReference)
    base = SequenceScorer(load_model(ws["model"], cfg.model)).eval()
    # Dropout in the base model shows that the reference pass runs in eval mode while the policy trains.
    for layer in trainer.model.get_base_model().model.layers:
        layer.self_attn.attention_dropout = 0.5
    _randomise_adapters(trainer.model)
    batch = _random_batch(trainer)
    trainer.scorer.train()

    ref = reference_pairs(trainer.reference, batch)
    again = reference_pairs(trainer.reference, batch)
    with torch.no_grad():
        expected = score_pairs(base, batch)
        trainer.scorer.eval()
        policy = score_pairs(trainer.scorer, batch)
        trainer.scorer.train()
    torch.testing.assert_close(ref.chosen_logps, expected.chosen_logps, rtol=1e-5, atol=0)
    torch.testing.assert_close(ref.rejected_logps, expected.rejected_logps, rtol=1e-5, atol=0)
    assert torch.equal(ref.chosen_logps, again.chosen_logps)  # no dropout: deterministic
    assert all(m.training for m in trainer.scorer.modules())  # the policy's train mode is restored
    assert not ref.chosen_logps.requires_grad
    assert (policy.chosen_logps - expected.chosen_logps).abs().min() > 1e-2  # the adapters are in the path


def test_only_adapters_train_and_the_base_is_unchanged(ws, tmp_path) -> None:
    trainer, grads = fit_recording_grads(toy_config(ws, tmp_path, **LORA, **{"train.max_steps": 3}))
    lora_params = {id(p) for n, p in trainer.model.named_parameters() if ".lora_" in n}
    trainable = {id(p) for p in trainer.model.parameters() if p.requires_grad}
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert lora_params and trainable == lora_params == in_optimizer
    assert {id(p) for p in trainer.optimizer.state} == lora_params
    assert grads and all(".lora_" in name for step in grads for name in step)
    original = load_weights(Path(ws["model"]))
    live = trainer.model.get_base_model().state_dict()
    for name, value in original.items():
        module, _, leaf = name.rpartition(".")
        key = f"{module}.base_layer.{leaf}" if f"{module}.base_layer.{leaf}" in live else name
        assert torch.equal(live[key], value), name
    assert any(v.abs().sum() > 0 for n, v in live.items() if "lora_B" in n)


def test_first_step_loss_is_ln2_since_b_starts_at_zero(ws, tmp_path) -> None:
    runner.train(toy_config(ws, tmp_path, **LORA, **{"train.max_steps": 1}))
    first = logged_metrics(tmp_path)[0]
    assert first["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert first["rewards/chosen"] == 0 and first["rewards/rejected"] == 0


@pytest.mark.equivalence
def test_gradient_checkpointing_gives_the_same_adapter_gradients(ws, tmp_path) -> None:
    opts = {**LORA, "train.max_steps": 2, "data.shuffle": False, "lora.dropout": 0.1}
    _, plain = fit_recording_grads(toy_config(ws, tmp_path / "plain", **opts))
    _, ckpt = fit_recording_grads(
        toy_config(ws, tmp_path / "ckpt", **opts, **{"model.gradient_checkpointing": True})
    )
    assert len(plain) == len(ckpt) == 2
    for a, b in zip(plain, ckpt, strict=True):
        assert_close_weights(a, b, rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for n, g in ckpt[1].items() if "lora_A" in n)  # A learns from step 2 on


def _logits(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=input_ids).logits


@pytest.mark.parametrize("mode", ["merged", "adapter"])
def test_export_gives_the_trained_model(ws, tmp_path, mode) -> None:
    # Checkpoint exports (merged every step) must leave the live model untouched: same result as without.
    opts = {**LORA, "train.max_steps": 3, "lora.export": mode}
    exporting = toy_config(ws, tmp_path / "exp", **opts, **{"ckpt.save_steps": 1, "ckpt.save_hf": True})
    trainer, _ = fit_recording_grads(exporting)
    quiet, _ = fit_recording_grads(toy_config(ws, tmp_path / "quiet", **opts))
    for (name, a), b in zip(
        trainer.model.state_dict().items(), quiet.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name

    ids = torch.randint(
        3, trainer.model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0)
    )
    trained = _logits(trainer.model, ids)
    final = tmp_path / "exp" / "final"
    if mode == "merged":
        assert not (final / "adapter_config.json").exists()
        exported = AutoModelForCausalLM.from_pretrained(final)
    else:
        assert {p.name for p in final.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
        assert not (final / "model.safetensors").exists() and (final / "tokenizer.json").is_file()
        exported = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ws["model"]), final)
    torch.testing.assert_close(_logits(exported, ids), trained, rtol=1e-5, atol=1e-5)
    base = _logits(AutoModelForCausalLM.from_pretrained(ws["model"]), ids)
    assert (base - trained).abs().max() > 1e-2
    assert (tmp_path / "exp" / "checkpoints" / "step-00000003" / "hf" / "tokenizer.json").is_file()


def test_resume_equals_uninterrupted(ws, tmp_path, monkeypatch) -> None:
    opts = {**LORA, "ckpt.save_steps": 2, "train.max_epochs": 2, "train.eval_steps": 2, "lora.dropout": 0.1}
    runner.train(toy_config(ws, tmp_path / "full", **opts))
    with monkeypatch.context() as patch:
        _crash_after_checkpoint(patch, step=4)
        with pytest.raises(KeyboardInterrupt):
            runner.train(toy_config(ws, tmp_path / "split", **opts))
    # Only what trains is checkpointed: the frozen base comes back from the model folder.
    saved = FileSystemReader(tmp_path / "split" / "checkpoints" / "step-00000004" / "dcp").read_metadata()
    model_keys = [k for k in saved.state_dict_metadata if k.startswith("model.")]
    assert model_keys and all(".lora_" in k for k in model_keys)
    runner.train(toy_config(ws, tmp_path / "split", **opts))
    full, split = load_weights(tmp_path / "full" / "final"), load_weights(tmp_path / "split" / "final")
    assert_close_weights(full, split, rtol=1e-6, atol=1e-6)
    assert logged_metrics(tmp_path / "full") == logged_metrics(tmp_path / "split")


@pytest.mark.slow
def test_cli_trains_with_lora_and_exports_both_ways(ws, tmp_path) -> None:
    run = tmp_path / "adapter_run"
    common = ["--model.name_or_path", ws["model"], "--data.train", ws["train"], "--data.eval", ws["eval"],
              "--lora.rank", "8", "--lora.alpha", "16", "--optim.lr", "1e-2", "--train.micro_batch_size", "8",
              "--train.batch_size", "8", "--data.max_len", "48", "--log.progress", "false"]  # fmt: skip
    result = run_cli("train", *common, "--output_dir", str(run), "--train.max_epochs", "3",
                  "--train.eval_at_start", "true", "--ckpt.save_steps", "100", "--lora.export", "adapter", one_thread=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [r for r in logged_metrics(run) if "eval/loss" in r]
    assert evals[0]["eval/loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"] - 0.01
    assert evals[-1]["eval/rewards/accuracies"] >= 0.9, evals

    # Resuming from the last checkpoint into a new folder only re-exports: the same weights, merged.
    last = run / "checkpoints" / "step-00000018"
    merged_run = tmp_path / "merged_run"
    result = run_cli("train", *common, "--output_dir", str(merged_run), "--train.max_epochs", "3",
                  "--ckpt.resume", str(last), "--lora.export", "merged", one_thread=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ws["model"]), run / "final")
    merged = AutoModelForCausalLM.from_pretrained(merged_run / "final")
    torch.testing.assert_close(_logits(merged, ids), _logits(adapter, ids), rtol=1e-5, atol=1e-5)
    assert json.loads((run / "final" / "adapter_config.json").read_text())["r"] == 8


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"lora.rank": "-1"}, "lora.rank: must be >= 0"),
        ({"lora.alpha": "0"}, "lora.alpha: must be > 0"),
        ({"lora.dropout": "1"}, "lora.dropout: must be in [0, 1)"),
        ({"lora.rank": "8", "lora.target_modules": ""}, "lora.target_modules: must name at least one"),
        (
            {"lora.rank": "8", "ref.name_or_path": "x"},
            "ref.name_or_path: with lora.rank > 0 the reference is",
        ),
        ({"lora.rank": "8", "ref.offload": "true"}, "ref.offload: with lora.rank > 0"),
        ({"lora.rank": "8", "strategy.name": "fsdp2"}, "strategy.name: LoRA runs with single or ddp"),
        ({"lora.export": "gguf"}, "lora.export: 'gguf' is not one of"),
    ],
)
def test_bad_lora_values_name_the_key(overrides, needle) -> None:
    with pytest.raises(ConfigError) as info:
        checked_config(None, overrides)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_reference_free_loss_with_lora_keeps_no_reference(ws, tmp_path) -> None:
    trainer, _ = runner.build_trainer(toy_config(ws, tmp_path, **LORA, **{"loss.type": "simpo"}))
    assert trainer.reference is None


def test_missing_peft_is_one_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` raise ImportError
    with pytest.raises(ConfigError, match=r"^lora\.rank: LoRA needs peft: pip install 'preftune\[lora\]'$"):
        checked_config(None, {"lora.rank": "8"})


@pytest.mark.parametrize(
    ("targets", "needle"),
    [("lm_head", "adapting the output embedding"), ("no_such_proj", "lora.target_modules: ")],
)
def test_bad_targets_are_refused_at_build(ws, tmp_path, targets, needle) -> None:
    cfg = toy_config(ws, tmp_path, **LORA, **{"lora.target_modules": targets})
    with pytest.raises(ConfigError, match=needle) as info:
        runner.build_trainer(cfg)
    assert "\n" not in str(info.value)


def test_moe_aux_loss_with_lora(ws, tmp_path) -> None:
    model_dir = tmp_path / "moe"
    write_toy_model_dir(model_dir, arch="mixtral", hidden_size=32)
    cfg = toy_config({**ws, "model": str(model_dir)}, tmp_path / "out", **LORA, **{"loss.aux_loss_coef": 0.5})
    trainer, _ = runner.build_trainer(cfg)
    losses = trainer.micro_batch_losses(next(iter(trainer.eval_dataloader)), training=False)
    assert losses.aux_loss is not None and float(losses.aux_loss) > 0
    want = float(losses.per_row.mean() + 0.5 * losses.aux_loss)
    assert float(losses.objective) == pytest.approx(want, rel=1e-6)


@pytest.mark.slow
def test_ddp_two_processes_match_one(ws, tmp_path) -> None:
    opts = {**LORA, "train.max_steps": 3, "train.micro_batch_size": 2, "train.batch_size": 8,
            "train.eval_steps": 3, "optim.adam_eps": 1e-3}  # fmt: skip
    runner.train(toy_config(ws, tmp_path / "one", **opts))
    launch(train_args(TORCHRUN, ws, tmp_path / "two", "ddp", opts))
    assert_same_metrics(tmp_path / "one", tmp_path / "two", atol=1e-7)
    assert_close_weights(
        load_weights(tmp_path / "one" / "final"),
        load_weights(tmp_path / "two" / "final"),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.equivalence
def test_lora_with_reference_cache_equals_adapter_disabled_reference(ws, tmp_path) -> None:
    """The cache scores the policy's own weights before adapters exist: the same numbers as switching the
    adapters off at every step, with no reference pass during training."""
    opts = {**LORA, "train.max_steps": 3, "data.shuffle": False, "train.eval_at_start": True}
    live = runner.train(toy_config(ws, tmp_path / "live", **opts))
    cached = runner.train(toy_config(ws, tmp_path / "cached", **opts, **{"ref.precompute": True}))
    assert_same_metrics(tmp_path / "live", tmp_path / "cached", atol=1e-6)
    assert_close_weights(load_weights(live), load_weights(cached), rtol=1e-5, atol=1e-6)
