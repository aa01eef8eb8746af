"""What happened to the rows: read, mixed, kept, and dropped (by reason, with the first few quoted)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..run_folder import RunFolder

_ROW_REPR_CHARS = 300


def quote_row(row: Any) -> str:
    """A dropped row as data_report.json quotes it: its repr, cut after a few hundred characters."""
    text = repr(row)
    return text[:_ROW_REPR_CHARS] + "..." if len(text) > _ROW_REPR_CHARS else text


@dataclass
class DataReport:
    """Counts for one split. ``kept + sum(dropped.values()) == rows_read``, where ``rows_read`` counts rows
    after mixing (an oversampled row counts each time it is drawn).

    Example ``to_dict()``::

        {"split": "train",
         "sources": {"a.jsonl": {"rows": 10, "used": 15, "repeated": 5}},
         "rows_read": 15, "kept": 14, "truncated": 2, "merged_responses": 0,
         "dropped": {"empty_field": 1},
         "examples": {"empty_field": [{"source": "a.jsonl", "index": 7, "row": "{'prompt': '', ...}"}]}}
    """

    split: str
    max_examples: int = 5
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    rows_read: int = 0
    kept: int = 0
    truncated: int = 0
    # Responses of kept groups merged into another response of the same prompt: the same text, or the same
    # ids once truncated (the merged one keeps the highest score). Pairs never add to it.
    merged_responses: int = 0
    # Plain-string prompts used as plain text although a chat template was there to render them: a hint for
    # the terminal (data.apply_chat_template), not a loss of data, so data_report.json leaves it out.
    untemplated_prompts: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def drop(self, reason: str, source: str, index: int, quoted: str) -> None:
        """Count one dropped row; ``quoted`` is :func:`quote_row` of it, kept for the first few per reason."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.max_examples:
            examples.append({"source": source, "index": index, "row": quoted})

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "sources": {name: dict(counts) for name, counts in self.sources.items()},
            "rows_read": self.rows_read,
            "kept": self.kept,
            "truncated": self.truncated,
            "merged_responses": self.merged_responses,
            "dropped": dict(self.dropped),
            "examples": {reason: [dict(e) for e in rows] for reason, rows in self.examples.items()},
        }


def report_from_dict(value: dict[str, Any], max_examples: int) -> DataReport:
    """The report :meth:`DataReport.to_dict` wrote (a store keeps its build's), with ``untemplated_prompts``
    when the dict has it."""
    fields = {k: v for k, v in value.items() if k in DataReport.__dataclass_fields__}
    return DataReport(max_examples=max_examples, **fields)


def write_data_report(reports: dict[str, DataReport], output_dir: str | Path) -> Path:
    """Write ``{"train": {...}, "eval": {...}}`` to ``<output_dir>/data_report.json`` and return its path."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = RunFolder(out).data_report
    path.write_text(json.dumps({name: r.to_dict() for name, r in reports.items()}, indent=2) + "\n")
    return path
