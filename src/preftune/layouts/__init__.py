"""Batch layouts: how rows (a prompt with K >= 2 responses; a pair is K = 2) become one forward pass, all exact.

- :mod:`.batch`: the seam (:class:`Batch`, :class:`Layout`) and the functions every layout shares to build a
  batch (:func:`preftune.model.responses.score_responses` scores it).
- :mod:`.padded`: ``padded``, the plain reference.
- :mod:`.segmented`: ``packed`` and ``prefix_shared``, one row per micro-batch under a segment plan.
- :mod:`.plan` and :mod:`.attention`: the segment plan and the attention function that reads it.

:func:`build_layout` is the one place a layout is chosen.
"""

from __future__ import annotations

from torch import nn

from ..config import LossConfig, TrainConfig, check
from .attention import supports_segments
from .batch import Batch, Layout
from .padded import PaddedLayout
from .segmented import PackedLayout, PrefixSharedLayout

LAYOUTS: dict[str, type[PaddedLayout] | type[PackedLayout] | type[PrefixSharedLayout]] = {
    "padded": PaddedLayout,
    "packed": PackedLayout,
    "prefix_shared": PrefixSharedLayout,
}
LAYOUT_CHOICES = ("auto", *LAYOUTS)


def check_layout_config(train: TrainConfig, loss: LossConfig) -> None:
    """Refuse a layout the loss cannot use, naming ``train.layout``."""
    check(train.layout != "prefix_shared" or loss.aux_loss_coef == 0, "train.layout",
          "prefix_shared routes each prompt once, so the MoE balancing loss (loss.aux_loss_coef) would differ "
          "from padded; use packed")  # fmt: skip


def build_layout(
    name: str,
    pad_token_id: int,
    model: nn.Module | None = None,
    aux_loss: bool = False,
    ld_alpha: float | None = None,
) -> Layout:
    """The layout named by ``train.layout``. ``auto`` picks the fastest exact one ``model`` supports:
    prefix_shared, or packed when an MoE balancing loss must see each token once per sequence as padded does,
    or padded when the model's attention does not take a segment plan (remote or older model code).
    ``ld_alpha`` (``loss.ld_alpha``) makes its batches carry LD-DPO's per-token weights."""
    if name == "auto":
        if model is None or not supports_segments(model):
            name = "padded"
        else:
            name = "packed" if aux_loss else "prefix_shared"
    if name not in LAYOUTS:
        raise ValueError(f"train.layout: unknown layout {name!r}; choose one of {', '.join(LAYOUT_CHOICES)}")
    return LAYOUTS[name](pad_token_id, ld_alpha)


__all__ = [
    "LAYOUTS",
    "LAYOUT_CHOICES",
    "Batch",
    "Layout",
    "PackedLayout",
    "PaddedLayout",
    "PrefixSharedLayout",
    "build_layout",
    "check_layout_config",
]
