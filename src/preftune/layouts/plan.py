"""The segment plan: which span of one long row each token attends to.

A :class:`SegmentPlan` tiles a row of tokens into segments. Each segment attends causally to itself and,
optionally, to every token of an earlier span (its *prefix*): a rejected response sees its prompt but not the
chosen response laid out between them. The segment layouts make a plan per batch; the attention function in
:mod:`preftune.layouts.attention` reads it. A plan is gathered once per device into a padded
(segments x queries x keys) grid that every layer of a forward, and its backward, reuses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

# The keyword argument that carries a plan from the decoder's forward down to the attention function.
PLAN_KWARG = "preftune_segment_plan"


@dataclass(frozen=True)
class Segment:
    start: int  # first query position in the row
    end: int  # one past the last
    prefix_start: int = 0  # keys [prefix_start, prefix_end) are visible to every query of the segment
    prefix_end: int = 0

    @property
    def has_prefix(self) -> bool:
        return self.prefix_end > self.prefix_start


@dataclass
class Grid:
    """A plan gathered into a padded (segments x queries x keys) grid for one batched SDPA call.

    ``query_index`` / ``key_index`` pick each grid cell's row position (padding cells point at position 0 and are
    masked out); ``mask`` is (segments, 1, queries, keys); ``back_index`` picks, for each row position in order,
    its cell in the flattened (segments x queries) output.
    """

    query_index: Tensor
    key_index: Tensor
    mask: Tensor
    back_index: Tensor
    segments: int
    queries: int
    keys: int


class SegmentPlan:
    """Segments tiling one row left to right, with no gap.

    A plain class on purpose, not a dataclass: FSDP2's mixed precision rebuilds every dataclass among a
    module's forward inputs to cast its tensors, which would hand each layer a copy, so the call count below
    (and the cached grid) would never reach the plan the scorer holds.
    """

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments
        self.calls = 0  # attention calls served; the scorer and the support probe read it
        self._grids: dict[str, Grid] = {}
        position = 0
        for seg in segments:
            if seg.start != position or seg.end <= seg.start:
                raise ValueError(f"segments must tile the row in order; {seg} follows position {position}")
            if seg.has_prefix and seg.prefix_end > seg.start:
                raise ValueError(f"a segment's prefix must lie before it: {seg}")
            position = seg.end

    def __repr__(self) -> str:
        return f"SegmentPlan({self.segments!r})"

    @property
    def length(self) -> int:
        return self.segments[-1].end if self.segments else 0

    def grid(self, device: torch.device) -> Grid:
        """Built once per plan and device: every layer of a forward, and its backward, reuses it."""
        if str(device) not in self._grids:
            self._grids[str(device)] = _grid_to(self._build_grid(), device)
        return self._grids[str(device)]

    def _build_grid(self) -> Grid:
        segs = self.segments
        queries = max(s.end - s.start for s in segs)
        keys = max(s.end - s.start + s.prefix_end - s.prefix_start for s in segs)
        query_index = torch.zeros(len(segs), queries, dtype=torch.long)
        key_index = torch.zeros(len(segs), keys, dtype=torch.long)
        mask = torch.zeros(len(segs), 1, queries, keys, dtype=torch.bool)
        back_index = torch.empty(self.length, dtype=torch.long)
        for i, seg in enumerate(segs):
            n, p = seg.end - seg.start, seg.prefix_end - seg.prefix_start
            query_index[i, :n] = torch.arange(seg.start, seg.end)
            key_index[i, :p] = torch.arange(seg.prefix_start, seg.prefix_end)
            key_index[i, p : p + n] = torch.arange(seg.start, seg.end)
            mask[i, 0, :n, :p] = True  # the whole prefix
            mask[i, 0, :n, p : p + n] = torch.ones(n, n, dtype=torch.bool).tril()  # causal over itself
            mask[i, 0, n:, 0] = True  # padding queries see one key, so no softmax row is empty (NaN)
            back_index[seg.start : seg.end] = torch.arange(i * queries, i * queries + n)
        return Grid(query_index.flatten(), key_index.flatten(), mask, back_index, len(segs), queries, keys)


def _grid_to(grid: Grid, device: torch.device) -> Grid:
    return dataclasses.replace(
        grid,
        query_index=grid.query_index.to(device),
        key_index=grid.key_index.to(device),
        mask=grid.mask.to(device),
        back_index=grid.back_index.to(device),
    )
