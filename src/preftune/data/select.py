"""Which source rows a split uses, in which order, decided from the sources' row counts alone.

The draw never looks at a row's content, so it can be made before any row is read: the build then reads,
converts and tokenises only the rows drawn, each once however often it is drawn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np


@dataclass
class Draw:
    """The split's rows in order: draw ``i`` is row ``index[i]`` of source ``source[i]`` (a source's number in
    the split's list). ``counts`` is ``{name: {"rows": read, "used": drawn, "repeated": drawn beyond read}}``."""

    source: np.ndarray  # int32
    index: np.ndarray  # int64
    counts: dict[str, dict[str, int]]

    def needed(self, source: int, rows: int) -> np.ndarray:
        """Which of a source's ``rows`` rows are drawn at least once, as a bool mask."""
        mask = np.zeros(rows, dtype=bool)
        mask[self.index[self.source == source]] = True
        return mask


def draw_rows(
    names: list[str], rows: list[int], probs: list[float] | None, max_samples: int | None, seed: int
) -> Draw:
    """The rows to use from sources of ``rows[i]`` rows each.

    With ``probs`` (say [3, 1], two sources of 100 rows, ``max_samples`` 40): source 0 gives
    round(0.75 * 40) = 30 rows and source 1 gives 10, each drawn from a seeded permutation of its source
    (further permutations follow when a source must give more rows than it has), then the draws are
    interleaved by a seeded shuffle. Without ``probs`` every row is used in order, and ``max_samples``
    keeps a seeded random subset, still in order.
    """
    if probs is None:
        source = np.repeat(np.arange(len(rows), dtype=np.int32), rows)
        index = np.concatenate([np.arange(n, dtype=np.int64) for n in rows])
        total = len(index)
        if max_samples is not None and max_samples < total:
            rng = random.Random(f"preftune-subset-{seed}")
            keep = np.array(sorted(rng.sample(range(total), max_samples)), dtype=np.int64)
            source, index = source[keep], index[keep]
    else:
        source, index = _mixed(rows, probs, max_samples, seed)
    counts = {}
    for i, (name, n) in enumerate(zip(names, rows, strict=True)):
        used = int(np.count_nonzero(source == i))
        counts[name] = {"rows": n, "used": used, "repeated": max(0, used - n)}
    return Draw(source, index, counts)


def _mixed(
    rows: list[int], probs: list[float], max_samples: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    total = max_samples if max_samples is not None else sum(rows)
    weight = sum(probs)
    drawn: list[tuple[int, int]] = []
    for i, n in enumerate(rows):
        want = round(probs[i] / weight * total)
        rng = random.Random(f"preftune-mix-{seed}-{i}")
        picks: list[int] = []
        while len(picks) < want:
            # random.sample picks positions from the population's length alone, so sampling range(n) gives
            # the same permutation a list of the n rows would get.
            picks.extend(rng.sample(range(n), n))
        drawn.extend((i, j) for j in picks[:want])
    random.Random(f"preftune-interleave-{seed}").shuffle(drawn)
    pairs = np.array(drawn, dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0].astype(np.int32), pairs[:, 1]
