"""DPO losses: a registry of small pure functions, one per variant, looked up by ``loss.type``.

- :mod:`.registry`: the input/output types, :class:`LossSpec`, :data:`LOSSES`, :func:`compute_loss` (pairs);
- :mod:`.pairwise`: the pairwise variants (sigmoid DPO, IPO, SimPO, ...), one function each, and the
  f-divergence scores they read;
- :mod:`.batchwise`: pairwise variants whose per-pair term reads the whole micro-batch (AOT, TRL's sft);
- :mod:`.groups`: prompt groups of K responses: the listwise variants (plackett_luce, multi_negative), every
  pairwise variant over a group's response pairs, and :func:`compute_group_loss`.

Importing this package registers every built-in variant, so :data:`LOSSES` is complete for whoever reads it.
"""

from . import batchwise as batchwise  # registers AOT and sft
from . import pairwise as pairwise  # registers the pairwise variants (first: they keep the registry's order)
from .checks import check_loss_config, trainer_loss_config
from .groups import compute_group_loss, expand_pairs
from .registry import (
    LOSSES,
    GroupLogps,
    GroupLossFn,
    GroupLossOutput,
    LossFn,
    LossOutput,
    LossSpec,
    LossState,
    PairLogps,
    compute_loss,
    get_loss,
    loss_terms,
    register_group_loss,
    register_loss,
)

__all__ = [
    "LOSSES",
    "GroupLogps",
    "GroupLossFn",
    "GroupLossOutput",
    "LossFn",
    "LossOutput",
    "LossSpec",
    "LossState",
    "PairLogps",
    "check_loss_config",
    "compute_group_loss",
    "compute_loss",
    "expand_pairs",
    "get_loss",
    "loss_terms",
    "register_group_loss",
    "register_loss",
    "trainer_loss_config",
]
