"""A seeded, resumable, rank-aware sampler: the data position is just (epoch, samples consumed)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Yields this rank's indices of one epoch, starting after ``skip`` globally consumed samples.

    The epoch order is a seeded permutation (or 0..n-1), cut to a multiple of ``global_batch`` so every
    optimizer step sees exactly ``global_batch`` samples. Rank r takes positions r, r+W, r+2W, ... so a
    global step covers the same samples whatever the world size W: with n=8, W=2, rank 1 yields
    perm[1], perm[3], perm[5], perm[7]. Resuming at ``skip`` = 4 makes rank 1 yield perm[5], perm[7].
    """

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        lengths: Sequence[int] | np.ndarray | None = None,
        group_batches: int = 16,
    ) -> None:
        if lengths is not None and len(lengths) != num_samples:
            raise ValueError(f"{len(lengths)} lengths for {num_samples} samples")
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        self.group_batches = group_batches
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0

    @property
    def samples_per_epoch(self) -> int:
        return (self.num_samples // self.global_batch) * self.global_batch

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        if skip % self.world_size:
            raise ValueError(
                f"cannot resume at sample {skip}: not a multiple of the world size {self.world_size}"
            )
        self.epoch = epoch
        self.skip = skip

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_samples))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_samples, generator=gen).tolist()

    def _grouped(self, order: list[int]) -> list[int]:
        """Length grouping: within each window of ``group_batches`` global batches, samples sorted longest first,
        so a micro-batch holds similar lengths and pads little; then the window's batches in a seeded order, so
        the longest batch does not always come first. A pure function of (seed, epoch): resuming replays it."""
        assert self.lengths is not None
        lengths, batch = self.lengths, self.global_batch
        gen = torch.Generator().manual_seed(self.seed + self.epoch + 1_000_003)
        grouped: list[int] = []
        window = batch * self.group_batches
        for start in range(0, len(order), window):
            ids = np.asarray(order[start : start + window], dtype=np.int64)
            # A stable sort: equal lengths keep their shuffled order, as sorted() with a key would.
            ranked = ids[np.argsort(-lengths[ids], kind="stable")].tolist()
            batches = [ranked[b : b + batch] for b in range(0, len(ranked), batch)]
            for b in torch.randperm(len(batches), generator=gen).tolist():
                grouped.extend(batches[b])
        return grouped

    def __iter__(self) -> Iterator[int]:
        order = self._order()[: self.samples_per_epoch]
        if self.lengths is not None:
            order = self._grouped(order)
        yield from order[self.skip + self.rank :: self.world_size]

    def __len__(self) -> int:
        return (self.samples_per_epoch - self.skip) // self.world_size


def set_sampler_position(dataloader: Any, epoch: int, skip: int) -> None:
    """Point a resumable sampler at ``epoch`` after ``skip`` consumed samples; plain samplers can't resume."""
    sampler = getattr(dataloader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        try:
            sampler.set_epoch(epoch, skip)  # type: ignore[union-attr]
        except TypeError:
            if skip:
                raise ValueError("resuming mid-epoch needs preftune's ResumableSampler") from None
            sampler.set_epoch(epoch)  # type: ignore[union-attr]
    elif skip:
        raise ValueError("resuming mid-epoch needs preftune's ResumableSampler")
