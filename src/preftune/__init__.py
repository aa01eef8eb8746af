"""preftune: Direct Preference Optimization for Hugging Face causal language models."""

from .config import Config, ConfigError, LossConfig, load_config
from .data.sampler import ResumableSampler
from .layouts import Batch, Layout, PaddedLayout, PairForward
from .losses import LOSSES, LossOutput, PairLogps, compute_loss, get_loss, register_loss
from .model.scorer import SequenceScorer
from .strategy import SingleProcessStrategy, Strategy
from .training.trainer import DPOTrainer

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
