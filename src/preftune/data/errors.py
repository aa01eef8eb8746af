"""The two ways a row can fail: a :class:`DataError` stops the run, a :class:`DropRow` is counted and skipped.

The split is deliberate. Anything that means the user's files or configuration are wrong everywhere (a missing
key, broken JSON, no chat template) is an error, because dropping every row quietly would hide it; anything
that is a property of one row (an empty answer, a row too long) is a drop, counted in data_report.json.
"""

from __future__ import annotations


class DataError(ValueError):
    """A source or row cannot be used at all; the message names the file, the row and the field."""


class DropRow(Exception):
    """Raised inside the pipeline to discard one row; ``reason`` becomes a key of ``DataReport.dropped``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
