"""Typed config: YAML + dotted overrides, validation naming the key, help listing every key."""

import subprocess
import sys

import pytest

from preftune.config import (
    Config,
    ConfigError,
    config_keys,
    help_lines,
    load_config,
    parse_overrides,
)
from preftune.validate import validate
from toy_env import checked_config


def test_yaml_then_overrides(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "loss:\n  type: ipo\n  beta: 0.5\ntrain:\n  batch_size: 16\ndata:\n  train: [a.jsonl, b.jsonl]\n"
    )
    cfg = load_config(path, {"loss.beta": "0.25", "optim.adam_betas": "0.8,0.9", "ckpt.save_steps": "none"})
    assert cfg.loss.type == "ipo" and cfg.loss.beta == 0.25
    assert cfg.train.batch_size == 16 and cfg.data.train == ["a.jsonl", "b.jsonl"]
    assert cfg.optim.adam_betas == [0.8, 0.9] and cfg.ckpt.save_steps is None


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"loss.beta": "-1"}, "loss.beta: must be > 0"),
        ({"loss.type": "nope"}, "loss.type: unknown loss 'nope'"),
        ({"loss.label_smoothing": "0.5"}, "loss.label_smoothing"),
        ({"train.batch_size": "10", "train.micro_batch_size": "4"}, "train.batch_size: 10 is not divisible"),
        ({"loss.type": "simpo", "ref.name_or_path": "x"}, "ref.name_or_path: loss 'simpo' is reference-free"),
        ({"train.micro_batch_size": "two"}, "train.micro_batch_size: expected an integer"),
        ({"model.dtype": "float8"}, "model.dtype: 'float8' is not one of"),
        ({"ckpt.save_hf": "maybe"}, "ckpt.save_hf: expected true or false"),
        ({"nope.key": "1"}, "unknown config key 'nope.key'"),
        ({"data.input_template": "no slot"}, "data.input_template"),
        ({"data.train": "a,b", "data.train_probs": "1"}, "data.train_probs: has 1 values for 2 sources"),
        ({"loss.ld_alpha": "0"}, "loss.ld_alpha: must be in (0, 1] (or none: off), got 0.0"),
        ({"loss.ld_alpha": "1.5"}, "loss.ld_alpha: must be in (0, 1]"),
        ({"loss.wpo": "maybe"}, "loss.wpo: expected true or false"),
        ({"data.num_proc": "0"}, "data.num_proc: must be >= 1, got 0"),
        ({"optim.lr": "nan"}, "optim.lr: must be a finite number, got nan"),
        ({"loss.weights": "1,inf", "loss.type": "sigmoid,sft"}, "loss.weights: must be a finite number"),
        ({"iterate.min_score_gap": "inf"}, "iterate.min_score_gap: must be a finite number, got inf"),
        ({"loss.beta": "inf"}, "loss.beta: must be a finite number, got inf"),
        ({"optim.lr": "inf"}, "optim.lr: must be a finite number, got inf"),
        ({"optim.adam_eps": "-1"}, "optim.adam_eps: must be > 0, got -1.0"),
        ({"optim.adam_eps": "0"}, "optim.adam_eps: must be > 0, got 0.0"),
        ({"optim.weight_decay": "-0.1"}, "optim.weight_decay: must be >= 0, got -0.1"),
    ],
)
def test_bad_values_name_the_key(overrides, needle) -> None:
    with pytest.raises(ConfigError) as info:
        checked_config(None, overrides)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_scoring_options_default_off_and_parse() -> None:
    loss = load_config(None, {}).loss
    assert (loss.wpo, loss.wpo_clamp, loss.ld_alpha) == (False, True, None)
    loss = load_config(None, {"loss.wpo": "true", "loss.wpo_clamp": "false", "loss.ld_alpha": "0.5"}).loss
    assert (loss.wpo, loss.wpo_clamp, loss.ld_alpha) == (True, False, 0.5)
    assert load_config(None, {"loss.ld_alpha": "none"}).loss.ld_alpha is None


def test_load_config_checks_fields_and_validate_the_rest() -> None:
    """load_config knows no loss registry (the config is the bottom layer); validate asks each owner."""
    cfg = load_config(None, {"loss.type": "nope"})
    with pytest.raises(ConfigError, match=r"loss\.type: unknown loss 'nope'"):
        validate(cfg)


@pytest.mark.slow
def test_importing_the_config_loads_no_torch() -> None:
    code = "import sys, preftune.config; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_world_size_enters_divisibility() -> None:
    cfg = load_config(None, {"train.batch_size": "8", "train.micro_batch_size": "2"})
    validate(cfg, world_size=4)
    with pytest.raises(ConfigError, match="micro_batch_size x world_size = 2 x 3"):
        validate(cfg, world_size=3)


def test_bad_yaml_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_help_lists_every_key_with_default() -> None:
    text = "\n".join(help_lines())
    for key in config_keys():
        assert f"--{key} " in text
    assert "--loss.beta float (default: 0.1)" in text


def test_parse_overrides_forms() -> None:
    path, over = parse_overrides(
        ["--config", "r.yaml", "--loss.beta=0.3", "--ckpt.save_hf", "--train.batch_size", "4"]
    )
    assert path == "r.yaml"
    assert over == {"loss.beta": "0.3", "ckpt.save_hf": "true", "train.batch_size": "4"}
    with pytest.raises(ConfigError, match=r"unknown option --loss\.bta"):
        parse_overrides(["--loss.bta", "1"])


def test_yaml_round_trip(tmp_path) -> None:
    cfg = load_config(None, {"loss.beta": "0.3", "data.train": "x.jsonl"})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg
    assert Config().loss.beta == 0.1
