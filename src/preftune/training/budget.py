"""Micro-batches made by a token budget (``train.micro_batch_tokens``) as well as by count.

A step's rows on a process (the very rows the split by count trains in that step: the sampler hands each
process ``batch_size / world_size`` of them) are cut, in order, into micro-batches of at most the budget's
tokens, as the layout counts them (:meth:`~preftune.layouts.Layout.laid_out_tokens`), and at most
``train.micro_batch_size`` rows. The trainer weights each micro-batch by its share of the step's rows
(:func:`.step.row_shares`), so the step's gradient is the one the split by count gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from ..layouts import Batch
from ..strategy import Strategy
from .step import StepLoader

Row = TypeVar("Row")
Cost = Callable[[Sequence[Any]], int]  # tokens a micro-batch of these rows lays out


def greedy_parts(rows: Sequence[Row], cost: Cost, limit: int, max_rows: int) -> list[list[Row]]:
    """``rows`` in order, each part filled while it stays within ``limit`` tokens and ``max_rows`` rows; a row
    over ``limit`` by itself makes a part of its own. No split in order makes fewer parts (a part within the
    limits stays within them without its last row, so filling each part first never costs one later).

    Rows of 4, 3, 5, 9 and 2 tokens, limit 8, at most 3 rows: [4, 3], [5], [9], [2].
    """
    parts: list[list[Row]] = []
    for row in rows:
        if parts and len(parts[-1]) < max_rows and cost([*parts[-1], row]) <= limit:
            parts[-1].append(row)
        else:
            parts.append([row])
    return parts


def balanced_split(
    rows: Sequence[Row], cost: Cost, budget: int, max_rows: int, parts: int | None = None
) -> list[list[Row]]:
    """``rows`` in order in exactly ``parts`` micro-batches (default: the fewest the budget allows), the
    largest as small as a split in order can make it, so no micro-batch goes over the budget unless a single
    row does. ``parts`` may exceed the fewest (another process needs more): the parts then shrink.

    Rows of 6, 2, 2 and 6 tokens, budget 10: in 2 parts [6, 2], [2, 6] (the greedy fill [6, 2, 2], [6] has
    one of 10); in 3 parts [6], [2, 2], [6].
    """
    if not rows:
        return []
    fewest = len(greedy_parts(rows, cost, budget, max_rows))
    parts = fewest if parts is None else parts
    if not fewest <= parts <= len(rows):
        raise ValueError(f"cannot split {len(rows)} rows into {parts} micro-batches (at least {fewest})")
    # The smallest limit under which the greedy fill needs no more than `parts` parts (a larger limit never
    # needs more, and the budget itself suffices), then the largest parts halved until there are `parts`.
    low, high = 1, budget
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if len(greedy_parts(rows, cost, mid, max_rows)) <= parts else (mid + 1, high)
    split = greedy_parts(rows, cost, low, max_rows)
    while len(split) < parts:
        i = max((j for j, part in enumerate(split) if len(part) > 1), key=lambda j: cost(split[j]))
        split[i : i + 1] = _halves(split[i], cost)
    return split


def _halves(part: list[Row], cost: Cost) -> list[list[Row]]:
    """``part`` cut in two where the larger side is smallest."""
    cut = min(range(1, len(part)), key=lambda k: max(cost(part[:k]), cost(part[k:])))
    return [part[:cut], part[cut:]]


def oversized(rows: Sequence[Row], cost: Cost, budget: int) -> list[tuple[int, Row]]:
    """(tokens, row) of each row that by itself lays out more than ``budget`` tokens."""
    return [(tokens, row) for row in rows if (tokens := cost([row])) > budget]


class TokenBudgetSteps(StepLoader):
    """One optimizer step at a time, split by the token budget.

    ``step_rows`` yields each step's rows on this process (a DataLoader of step-sized lists over the resumable
    sampler). Every process cuts its rows into as many micro-batches as the busiest process needs (one
    all-reduce of the count per step), so all of them run the same number of forwards and backwards: their
    collectives pair up (DDP's and FSDP2's reduction on the last, FSDP2's and ZeRO-3's gathers in each). Their
    rows are as many, so no process ever needs more micro-batches than it has rows.
    """

    def __init__(
        self,
        step_rows: Any,
        collate: Callable[[list[Any]], Batch],
        cost: Cost,
        budget: int,
        max_rows: int,
        strategy: Strategy,
    ) -> None:
        self.step_rows, self.collate, self.cost = step_rows, collate, cost
        self.budget, self.max_rows, self.strategy = budget, max_rows, strategy

    @property
    def sampler(self) -> Any:
        return self.step_rows.sampler

    @property
    def dataset(self) -> Any:
        """The rows the steps are drawn from, as a DataLoader's ``dataset``."""
        return self.step_rows.dataset

    def __len__(self) -> int:
        return len(self.step_rows)

    def __iter__(self) -> Iterator[list[Batch]]:
        for rows in self.step_rows:
            own = len(greedy_parts(rows, self.cost, self.budget, self.max_rows))
            most = self.strategy.all_reduce({"micro_batches": float(own)}, op="max")["micro_batches"]
            split = balanced_split(rows, self.cost, self.budget, self.max_rows, int(most))
            yield [self.collate(part) for part in split]
