"""preftune: Direct Preference Optimization for Hugging Face causal language models.

The public names load on first use (PEP 562), so ``import preftune.config`` (or the CLI's ``--help``) reads the
configuration without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_HOMES = {
    "Config": "config", "ConfigError": "config", "LossConfig": "config", "load_config": "config",
    "validate": "validate", "ResumableSampler": "data.sampler",
    "Row": "data.items", "Batch": "layouts", "Layout": "layouts", "PaddedLayout": "layouts",
    "LOSSES": "losses", "LossOutput": "losses", "PairLogps": "losses", "ResponseLogps": "losses",
    "RowLossOutput": "losses", "compute_loss": "losses", "compute_pair_loss": "losses",
    "get_loss": "losses", "register_loss": "losses", "SequenceScorer": "model.scorer",
    "SingleProcessStrategy": "strategy", "Strategy": "strategy", "DPOTrainer": "training.trainer",
}  # fmt: skip

__all__ = [
    "LOSSES",
    "Batch",
    "Config",
    "ConfigError",
    "DPOTrainer",
    "Layout",
    "LossConfig",
    "LossOutput",
    "PaddedLayout",
    "PairLogps",
    "ResponseLogps",
    "ResumableSampler",
    "Row",
    "RowLossOutput",
    "SequenceScorer",
    "SingleProcessStrategy",
    "Strategy",
    "compute_loss",
    "compute_pair_loss",
    "get_loss",
    "load_config",
    "register_loss",
    "validate",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'preftune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


if TYPE_CHECKING:
    from .config import Config, ConfigError, LossConfig, load_config
    from .data.items import Row
    from .data.sampler import ResumableSampler
    from .layouts import Batch, Layout, PaddedLayout
    from .losses import (
        LOSSES,
        LossOutput,
        PairLogps,
        ResponseLogps,
        RowLossOutput,
        compute_loss,
        compute_pair_loss,
        get_loss,
        register_loss,
    )
    from .model.scorer import SequenceScorer
    from .strategy import SingleProcessStrategy, Strategy
    from .training.trainer import DPOTrainer
    from .validate import validate
