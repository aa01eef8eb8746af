"""The data layer: user files -> preference rows -> token ids, with a report of every dropped row.

Entry points: :func:`load_rows` (one split, as :class:`Row` objects: a prompt with K >= 2 scored responses, a
pair being the row [chosen, rejected] with scores [1, 0]) and :func:`write_data_report`.
"""

from .errors import DataError
from .items import Row
from .load import load_rows
from .report import DataReport, write_data_report

__all__ = [
    "DataError",
    "DataReport",
    "Row",
    "load_rows",
    "write_data_report",
]
