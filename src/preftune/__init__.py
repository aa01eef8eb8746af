"""preftune: Direct Preference Optimization for Hugging Face causal language models."""

from .config import Config, ConfigError, LossConfig, load_config
from .forward import Batch, Layout, PaddedLayout, PairForward, SequenceScorer
from .losses import LOSSES, LossOutput, PairLogps, compute_loss, get_loss, register_loss
from .sampler import ResumableSampler
from .strategy import SingleProcessStrategy, Strategy
from .trainer import DPOTrainer

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
    "PairForward",
    "PairLogps",
    "ResumableSampler",
    "SequenceScorer",
    "SingleProcessStrategy",
    "Strategy",
    "compute_loss",
    "get_loss",
    "load_config",
    "register_loss",
]
