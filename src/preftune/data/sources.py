"""Reading rows from files, ``save_to_disk`` folders and Hub datasets, and mixing several sources into one list.

Every row keeps where it came from, e.g. ``RawRow(source="data/a.jsonl", index=3, line=5, data={...})``
(``index`` counts rows from 0, ``line`` is the 1-based line for line-oriented files), so an error or a drop
further down can point at the exact row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError
from .readers import (
    Located,
    count_jsonl,
    iter_csv,
    iter_dataset,
    iter_json,
    iter_jsonl,
    iter_parquet,
    one_line,
    parquet_rows,
)

SUPPORTED = (".jsonl", ".json", ".parquet", ".csv")
_SUPPORTED_TEXT = ", ".join(SUPPORTED) + " files, or a folder written by datasets' save_to_disk"
# "org/name"; a name ending in ".ext" was meant as a local file, so it gets "file not found" instead.
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,7}$")


@dataclass
class RawRow:
    source: str
    index: int
    data: dict[str, Any]
    line: int | None = None

    def where(self) -> str:
        """``"data/a.jsonl:5 (row 3)"`` for line-oriented files, else ``"data/a.parquet row 3"``."""
        if self.line is not None:
            return f"{self.source}:{self.line} (row {self.index})"
        return f"{self.source} row {self.index}"


def iter_source(name: str, split: str, chunk_rows: int = 2048) -> Iterator[list[RawRow]]:
    """The rows of :func:`read_source`, in order, in lists of at most ``chunk_rows``: a chunk (and a block of
    the file) is held at a time, never the whole source, except a .json file, one document parsed whole.

    A missing or unsupported source raises here; an error in the data raises when the chunk holding it is
    reached, so rows before it may already have been yielded.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}.")
    return _chunks(name, split, _located(name, _kind(name), split, chunk_rows), chunk_rows)


def read_source(name: str, split: str) -> list[RawRow]:
    """All rows of one source. Files ignore ``split``; folders and Hub datasets read that split."""
    return [row for chunk in iter_source(name, split) for row in chunk]


def count_rows(name: str, split: str) -> int:
    """How many rows :func:`read_source` gives for a valid source, found cheaply where the format allows:
    non-blank lines of a .jsonl file (no JSON parsed), a Parquet footer, a dataset's length. .csv and .json
    files are read. An empty source counts 0 (read_source refuses it); a missing or unsupported source raises
    as read_source does. A malformed file may count rows that read_source then refuses.
    """
    kind = _kind(name)
    if kind == ".jsonl":
        return count_jsonl(Path(name))
    if kind == ".parquet":
        return parquet_rows(Path(name))
    if kind in ("folder", "hub"):
        return len(_dataset(name, kind, split))
    return sum(1 for _ in _located(name, kind, split, 2048))


def _kind(name: str) -> str:
    """The source's kind: "folder", "hub", or a file's suffix from SUPPORTED; a DataError for anything else."""
    path = Path(name)
    if path.is_dir():
        return "folder"
    if path.is_file():
        if path.suffix.lower() not in SUPPORTED:
            raise DataError(
                f"{name}: unsupported file type {path.suffix or '(no extension)'!r}; "
                f"supported: {_SUPPORTED_TEXT}, or a Hugging Face Hub dataset name."
            )
        return path.suffix.lower()
    if _HUB_NAME.match(name) and not _FILE_EXTENSION.search(name):
        return "hub"
    raise DataError(
        f"{name}: file not found (checked relative to {Path.cwd()}); give an existing "
        f"{_SUPPORTED_TEXT}, or a Hub dataset name such as 'org/name'."
    )


def _located(name: str, kind: str, split: str, chunk_rows: int) -> Iterator[Located]:
    # A generator, so that nothing is opened or loaded before the first chunk is asked for.
    path = Path(name)
    if kind in ("folder", "hub"):
        yield from iter_dataset(_dataset(name, kind, split), chunk_rows)
    elif kind == ".parquet":
        yield from iter_parquet(path, chunk_rows)
    else:
        yield from _FILE_READERS[kind](path)


_FILE_READERS: dict[str, Callable[[Path], Iterator[Located]]] = {
    ".jsonl": iter_jsonl,
    ".json": iter_json,
    ".csv": iter_csv,
}


def _chunks(name: str, split: str, located: Iterator[Located], chunk_rows: int) -> Iterator[list[RawRow]]:
    chunk: list[RawRow] = []
    index = -1
    for index, (value, line) in enumerate(located):
        if not isinstance(value, dict):
            where = f"{name}:{line}" if line is not None else f"{name} row {index}"
            raise DataError(
                f"{where}: expected an object with prompt/chosen/rejected keys, got {type(value).__name__}."
            )
        chunk.append(RawRow(name, index, value, line))
        if len(chunk) == chunk_rows:
            yield chunk
            chunk = []
    if index < 0:
        raise DataError(f"{name}: holds no rows (split {split!r} where splits apply); nothing to train on.")
    if chunk:
        yield chunk


def _dataset(name: str, kind: str, split: str) -> Any:
    return _load_folder(Path(name), split) if kind == "folder" else _load_hub(name, split)


def _load_folder(path: Path, split: str) -> Any:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(
            f"{path}: a folder must be written by datasets' save_to_disk ({one_line(exc)}); for plain files give "
            "the file itself."
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"{path}: has no split {split!r}; its splits are {sorted(loaded)} "
                "(set data.train_split / data.eval_split)."
            )
        loaded = loaded[split]
    return loaded


def _load_hub(name: str, split: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # the Hub client raises many unrelated types; all mean "cannot use this name"
        raise DataError(
            f"{name}: neither a local file or folder nor a dataset loadable from the Hugging Face Hub "
            f"with split {split!r} ({type(exc).__name__}: {one_line(exc)})."
        ) from None
