"""The data layer: user files -> preference rows -> token ids, with a report of every dropped row.

Entry points: :func:`load_pairs` (one split, as :class:`TokenizedPair` lists), :func:`load_groups` (one split,
as :class:`TokenizedGroup` lists: a prompt with K scored responses) and :func:`write_data_report`.
"""

from .errors import DataError
from .items import TokenizedGroup, TokenizedPair
from .load import load_groups, load_pairs
from .report import DataReport, write_data_report

__all__ = [
    "DataError",
    "DataReport",
    "TokenizedGroup",
    "TokenizedPair",
    "load_groups",
    "load_pairs",
    "write_data_report",
]
