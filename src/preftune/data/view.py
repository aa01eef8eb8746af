"""A split's rows as training reads them: a sequence over its memory-mapped store, building each row only when
it is asked for, numbered by position for the reference table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np

from .items import Row
from .store import RowStore


class StoreRows(Sequence[Row]):
    """The rows of ``store``. Row ``i``'s ``row_id`` is ``first_id + i`` once :meth:`number_from` gave a first
    id (-1 before: not numbered)."""

    def __init__(self, store: RowStore) -> None:
        self.store = store
        self.first_id = -1

    def number_from(self, first_id: int) -> None:
        self.first_id = first_id

    def __len__(self) -> int:
        return len(self.store)

    @overload
    def __getitem__(self, i: int) -> Row: ...
    @overload
    def __getitem__(self, i: slice) -> list[Row]: ...
    def __getitem__(self, i: int | slice) -> Row | list[Row]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = self.store[i]
        row.row_id = -1 if self.first_id < 0 else self.first_id + (i % len(self))
        return row

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def response_counts(self) -> np.ndarray:
        return self.store.response_counts()

    def widths(self) -> np.ndarray:
        """Per row: prompt plus longest response, in tokens (a padded row's width)."""
        return self.store.widths()


def padded_widths(rows: Sequence[Row]) -> np.ndarray:
    """Per row: prompt plus longest response, in tokens; read from a store's offsets when it has one."""
    if isinstance(rows, StoreRows):
        return rows.widths()
    return np.array([len(r.prompt_ids) + max(map(len, r.responses)) for r in rows], dtype=np.int64)


def response_counts(rows: Sequence[Row]) -> list[int]:
    """Per row: how many responses it has (a pair: 2)."""
    if isinstance(rows, StoreRows):
        return rows.response_counts().tolist()
    return [len(r.responses) for r in rows]
