"""TR-DPO's soft update, ``target <- alpha * source + (1 - alpha) * target``, tensor by tensor.

The formula lives here once; each strategy decides which tensors a process holds (whole copies, FSDP2's local
shards, ZeRO-3's partitions) and hands them to :func:`mix_`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn


def mix_(target: Tensor, source: Tensor, alpha: float) -> None:
    """``target <- (1 - alpha) * target + alpha * source`` in place, in the target's dtype and on its device
    (TRL's order of operations: scale the target, then add the scaled source)."""
    with torch.no_grad():
        target.mul_(1.0 - alpha).add_(source.to(target.device, target.dtype), alpha=alpha)


def global_shape(param: Tensor) -> tuple[int, ...]:
    """A parameter's full shape, whether whole, an FSDP2 DTensor (its global shape) or a ZeRO-3 placeholder."""
    shape = getattr(param, "ds_shape", None)
    return tuple(shape if shape is not None else param.shape)


def paired_parameters(target: nn.Module, source: nn.Module) -> Iterator[tuple[str, Tensor, Tensor]]:
    """``(name, target param, source param)`` for two modules of one architecture, in registration order (the
    same on every process, which the collective paths rely on); a name or shape mismatch is an error."""
    theirs = list(source.named_parameters())
    ours = list(target.named_parameters())
    if [n for n, _ in ours] != [n for n, _ in theirs]:
        missing = sorted({n for n, _ in ours} ^ {n for n, _ in theirs})[:3]
        raise ValueError(f"the reference and the policy have different parameters (e.g. {missing})")
    for (name, mine), (_, other) in zip(ours, theirs, strict=True):
        if global_shape(mine) != global_shape(other):
            raise ValueError(
                f"{name}: the reference's shape {global_shape(mine)} differs from the policy's {global_shape(other)}"
            )
        yield name, mine, other
