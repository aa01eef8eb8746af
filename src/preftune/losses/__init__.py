"""DPO losses: a registry of small pure functions, one per variant, looked up by ``loss.type``.

- :mod:`.registry`: the input/output types, :class:`LossSpec`, :data:`LOSSES`, :func:`compute_loss` (pairs);
- :mod:`.pairwise`: the pairwise variants (sigmoid DPO, IPO, SimPO, ...), one function each.

Importing this package registers every built-in variant, so :data:`LOSSES` is complete for whoever reads it.
"""

from . import pairwise as pairwise  # registers the pairwise variants
from .registry import (
    LOSSES,
    LossFn,
    LossOutput,
    LossSpec,
    LossState,
    PairLogps,
    compute_loss,
    get_loss,
    register_loss,
)

__all__ = [
    "LOSSES",
    "LossFn",
    "LossOutput",
    "LossSpec",
    "LossState",
    "PairLogps",
    "compute_loss",
    "get_loss",
    "register_loss",
]
