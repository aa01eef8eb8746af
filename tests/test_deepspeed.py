"""DeepSpeed ZeRO under torchrun with 2 gloo processes on CPU (DS_ACCELERATOR=cpu): parity, resume, export."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from launch import launch, train_args
from preftune.config import ConfigError, load_config
from preftune.strategy.deepspeed_strategy import build_ds_config
from preftune.training import runner
from test_distributed import RUN, _assert_same_metrics, _assert_same_weights, _torchrun

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed not installed (pip install 'preftune[deepspeed]')",
)


WORKSPACE = {"n_train": 64}  # the sizes of this module's `ws` (tests/conftest.py)


@pytest.fixture(scope="module")
def single_run(ws, tmp_path_factory):
    from toy_env import toy_config

    out = tmp_path_factory.mktemp("single_ds")
    runner.train(toy_config(ws, out, **RUN))
    return out


@pytest.mark.slow
@needs_deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_matches_one_process_and_exports(ws, single_run, tmp_path, stage) -> None:
    out = tmp_path / f"zero{stage}"
    _torchrun(ws, out, "deepspeed", {"strategy.zero_stage": stage})
    # Measured: identical to 6 digits; the bound is 2e-4 (DeepSpeed's fp32 reductions may reorder sums).
    _assert_same_metrics(single_run, out)
    _assert_same_weights(single_run, out)
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert sum(p.numel() for p in model.parameters()) > 0
    ckpt = out / "checkpoints" / "step-00000004"
    assert (ckpt / "deepspeed").is_dir()  # DeepSpeed's own format, saved through the engine


@pytest.mark.slow
@needs_deepspeed
def test_resume_from_deepspeed_checkpoint(ws, tmp_path) -> None:
    full = tmp_path / "full"
    _torchrun(ws, full, "deepspeed", {"strategy.zero_stage": 2})
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoints" / "step-00000002", resumed / "checkpoints" / "step-00000002")
    shutil.copy(full / "metrics.jsonl", resumed / "metrics.jsonl")
    client = torch.load(
        next((full / "checkpoints" / "step-00000002" / "deepspeed").glob("*model_states.pt")),
        weights_only=False,
    )
    assert client["consumed_samples"] == 16 and client["global_step"] == 2  # data position in client state
    _torchrun(ws, resumed, "deepspeed", {"strategy.zero_stage": 2})
    _assert_same_weights(full, resumed)
    _assert_same_metrics(full, resumed)


def test_user_json_is_filled_and_conflicts_name_both_values(tmp_path) -> None:
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 3}, "gradient_clipping": 1.0}))
    cfg = load_config(
        None, {"strategy.config": str(user), "train.batch_size": 8, "train.micro_batch_size": 2}
    )
    ds = build_ds_config(cfg, world_size=2)
    assert ds["zero_optimization"]["stage"] == 3 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["train_batch_size"] == 8
    clash = load_config(None, {"strategy.config": str(user), "optim.max_norm": 0.5})
    with pytest.raises(ConfigError, match=r"gradient_clipping = 1\.0 but optim\.max_norm gives 0\.5"):
        build_ds_config(clash, world_size=1)
    stage_clash = load_config(None, {"strategy.config": str(user), "strategy.zero_stage": 2})
    with pytest.raises(ConfigError, match=r"zero_optimization\.stage = 3 but strategy\.zero_stage gives 2"):
        build_ds_config(stage_clash, world_size=1)
    with pytest.raises(ConfigError, match=r"offload_params: parameter offload needs strategy\.zero_stage 3"):
        build_ds_config(load_config(None, {"strategy.offload_params": True}), world_size=1)


def test_missing_deepspeed_is_a_one_line_error(monkeypatch) -> None:
    from preftune.strategy.deepspeed_strategy import import_deepspeed

    monkeypatch.setitem(sys.modules, "deepspeed", None)  # makes `import deepspeed` raise ImportError
    with pytest.raises(ConfigError, match=r"pip install 'preftune\[deepspeed\]'"):
        import_deepspeed()


@pytest.mark.slow
@needs_deepspeed
@pytest.mark.parametrize(
    "extra",
    [
        {"strategy.zero_stage": 1},
        {"strategy.zero_stage": 3, "strategy.offload_optimizer": "true", "strategy.offload_params": "true"},
    ],
    ids=["zero1", "zero3-offload"],
)
def test_other_stages_and_offload_match(ws, single_run, tmp_path, extra) -> None:
    out = tmp_path / "run"
    _torchrun(ws, out, "deepspeed", extra)
    _assert_same_metrics(single_run, out)


@pytest.mark.slow
@needs_deepspeed
def test_deepspeed_launcher(ws, single_run, tmp_path) -> None:
    out = tmp_path / "launcher"
    launcher = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--module", "preftune"]
    launch(train_args(launcher, ws, out, "deepspeed", RUN), DS_ACCELERATOR="cpu")
    _assert_same_metrics(single_run, out)
