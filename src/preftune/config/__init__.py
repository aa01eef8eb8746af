"""Typed, nested run configuration: YAML file + dotted command-line overrides, each field checked as it is read.

Every leaf is addressable as ``section.key`` (``--loss.beta 0.1``); top-level keys have no section
(``--output_dir runs/x``). Errors are :class:`ConfigError` with a one-line message naming the key. The sections
are :mod:`.sections`, reading them :mod:`.loading`, field-level checks :mod:`.fields`. This package imports no
other part of preftune but :mod:`preftune.errors` (and so no torch); the checks of what a value means for the rest
of a run live with their owners, all called by :func:`preftune.validate.validate`.
"""

from ..errors import ConfigError
from .fields import check, check_fields, check_loss_fields
from .loading import (
    COMMAND_SECTIONS,
    config_from_args,
    config_keys,
    flatten,
    help_lines,
    load_config,
    parse_overrides,
    set_value,
)
from .sections import (
    CkptConfig,
    Config,
    DataConfig,
    IterateConfig,
    LogConfig,
    LoraConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RefConfig,
    StrategyConfig,
    TrainConfig,
    leaf_fields,
)

__all__ = [
    "COMMAND_SECTIONS", "CkptConfig", "Config", "ConfigError", "DataConfig", "IterateConfig", "LogConfig",
    "LoraConfig", "LossConfig", "ModelConfig", "OptimConfig", "RefConfig", "StrategyConfig", "TrainConfig",
    "check", "check_fields", "check_loss_fields", "config_from_args", "config_keys", "flatten", "help_lines",
    "leaf_fields", "load_config", "parse_overrides", "set_value",
]  # fmt: skip
