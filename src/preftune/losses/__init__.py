"""DPO losses: a registry of small pure functions, one per variant, looked up by ``loss.type``.

- :mod:`.registry`: the input/output types, :class:`LossSpec`, :data:`LOSSES`, :func:`compute_pair_loss`
  (a pairwise variant on explicit pairs);
- :mod:`.pairwise`: the pairwise variants (sigmoid DPO, IPO, SimPO, ...), one function each, and the
  f-divergence scores they read;
- :mod:`.batchwise`: pairwise variants whose per-pair term reads the whole micro-batch (AOT, TRL's sft);
- :mod:`.rows`: :func:`compute_loss`, the loss of each row (a prompt with K >= 2 responses; a pair is K =
  2): the listwise variants (plackett_luce, multi_negative), and every pairwise variant over a row's pairs.

Importing this package registers every built-in variant, so :data:`LOSSES` is complete for whoever reads it.
"""

from . import batchwise as batchwise  # registers AOT and sft
from . import pairwise as pairwise  # registers the pairwise variants (first: they keep the registry's order)
from .checks import check_loss_config, trainer_loss_config
from .registry import (
    LOSSES,
    GroupLossFn,
    LossFn,
    LossOutput,
    LossSpec,
    LossState,
    PairLogps,
    ResponseLogps,
    RowLossOutput,
    compute_pair_loss,
    get_loss,
    loss_terms,
    register_group_loss,
    register_loss,
)
from .rows import compute_loss, expand_pairs

__all__ = [
    "LOSSES",
    "GroupLossFn",
    "LossFn",
    "LossOutput",
    "LossSpec",
    "LossState",
    "PairLogps",
    "ResponseLogps",
    "RowLossOutput",
    "check_loss_config",
    "compute_loss",
    "compute_pair_loss",
    "expand_pairs",
    "get_loss",
    "loss_terms",
    "register_group_loss",
    "register_loss",
    "trainer_loss_config",
]
