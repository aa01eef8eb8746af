"""The data layer: user files -> preference rows -> token ids, with a report of every dropped row.

Entry points: :func:`load_pairs` (one split, as :class:`TokenizedPair` lists) and :func:`write_data_report`.
"""

from .errors import DataError
from .load import TokenizedGroup, TokenizedPair, load_pairs
from .report import DataReport, write_data_report

__all__ = ["DataError", "DataReport", "TokenizedGroup", "TokenizedPair", "load_pairs", "write_data_report"]
