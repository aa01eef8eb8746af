"""Reading rows from files, ``save_to_disk`` folders and Hub datasets, and mixing several sources into one list.

Every row keeps where it came from, e.g. ``RawRow(source="data/a.jsonl", index=3, line=5, data={...})``
(``index`` counts rows from 0, ``line`` is the 1-based line for line-oriented files), so an error or a drop
further down can point at the exact row.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError

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


Located = list[tuple[Any, int | None]]  # (row value, 1-based line or None)


def read_source(name: str, split: str) -> list[RawRow]:
    """All rows of one source. Files ignore ``split``; folders and Hub datasets read that split."""
    path = Path(name)
    if path.is_dir():
        located: Located = [(row, None) for row in _read_folder(path, split)]
    elif path.is_file():
        reader = _READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(
                f"{name}: unsupported file type {path.suffix or '(no extension)'!r}; "
                f"supported: {_SUPPORTED_TEXT}, or a Hugging Face Hub dataset name."
            )
        located = reader(path)
    elif _HUB_NAME.match(name) and not _FILE_EXTENSION.search(name):
        located = [(row, None) for row in _read_hub(name, split)]
    else:
        raise DataError(
            f"{name}: file not found (checked relative to {Path.cwd()}); give an existing "
            f"{_SUPPORTED_TEXT}, or a Hub dataset name such as 'org/name'."
        )
    if not located:
        raise DataError(f"{name}: holds no rows (split {split!r} where splits apply); nothing to train on.")
    rows = []
    for index, (value, line) in enumerate(located):
        if not isinstance(value, dict):
            where = f"{name}:{line}" if line is not None else f"{name} row {index}"
            raise DataError(
                f"{where}: expected an object with prompt/chosen/rejected keys, got {type(value).__name__}."
            )
        rows.append(RawRow(name, index, value, line))
    return rows


def _one_line(exc: BaseException) -> str:
    """A library's message on one line: Arrow's, for one, spans several ("...Invalid data\nDeserializing page
    header failed.\n"), and the CLI promises a one-line error."""
    return " ".join(str(exc).split())


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start}).") from None


def _loads(text: str, where: str) -> Any:
    """``json.loads``, with the two failures that are not a JSONDecodeError turned into a DataError too."""
    try:
        return json.loads(text)
    except RecursionError:  # "[[[[..." thousands deep: the parser recurses once per level
        raise DataError(f"{where}: not valid JSON (nested deeper than the JSON parser allows).") from None
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            raise
        # Python 3.11+ refuses to convert an integer literal of more than 4300 digits.
        raise DataError(f"{where}: not usable JSON ({exc}).") from None


# JSON lines end at \n, \r\n or \r only. str.splitlines() also splits at U+2028, U+2029 and U+0085, which JSON
# allows raw inside strings (json.dumps(ensure_ascii=False) writes them), so it would cut valid rows in two.
_JSON_LINE_END = re.compile(r"\r\n|\r|\n")


def _read_jsonl(path: Path, text: str | None = None) -> Located:
    rows: Located = []
    lines = _JSON_LINE_END.split(_read_text(path) if text is None else text)
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append((_loads(line, f"{path}:{line_no}"), line_no))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{line_no}: not valid JSON ({exc.msg}: column {exc.colno}); each line of a "
                ".jsonl file must be one JSON object."
            ) from None
    return rows


def _read_json(path: Path) -> Located:
    text = _read_text(path)
    try:
        value = _loads(text, str(path))
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several top-level values: the file is JSON lines with a .json name
            return _read_jsonl(path, text)
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}: column {exc.colno}).") from None
    if isinstance(value, dict):
        for key in ("data", "train"):
            if isinstance(value.get(key), list):
                value = value[key]
                break
        else:
            raise DataError(
                f"{path}: a .json file must hold a list of rows or an object with a 'data' or 'train' "
                f"list; found an object with keys {sorted(value)}."
            )
    if not isinstance(value, list):
        raise DataError(f"{path}: a .json file must hold a list of rows, found {type(value).__name__}.")
    return [(row, None) for row in value]


def _read_parquet(path: Path) -> Located:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot be read as Parquet ({_one_line(exc)}).") from None
    unconvertible = (pa.ArrowException, ValueError, OverflowError)
    try:
        return [(row, None) for row in table.to_pylist()]
    except unconvertible as exc:
        # Every column is converted, used or not, and some Arrow values have no Python equivalent (a
        # timestamp past year 9999 raises OverflowError, a name or string that is not UTF-8 a
        # UnicodeDecodeError); find the column so the message can name it.
        bad = []
        for i in range(table.num_columns):
            try:
                table.column(i).to_pylist()
                continue
            except unconvertible:
                pass
            try:
                bad.append(repr(table.schema.field(i).name))
            except unconvertible:
                bad.append(f"number {i + 1}")
        what = f"column(s) {', '.join(bad)}" if bad else "the column names"
        raise DataError(
            f"{path}: {what} cannot be converted to Python values "
            f"({type(exc).__name__}: {_one_line(exc)}); remove or fix them."
        ) from None


def _read_csv(path: Path) -> Located:
    # Long answers exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    # newline="" lets the csv module see quoted newlines inside a field.
    with path.open(encoding="utf-8-sig", newline="") as f:
        # strict: a quote left open (a file cut off mid-field) is an error, not one field swallowing the rest
        # of the file, which would silently turn every later row into text of that one.
        reader = csv.DictReader(f, strict=True)
        rows: Located = []
        start = 1  # first line of the row being read: reader.line_num lags when a row ends in an error
        try:
            if reader.fieldnames is None:  # reads the header; None for an empty file
                return rows
            header = reader.fieldnames
            start = reader.line_num + 1
            for row in reader:
                # DictReader puts values past the header under the key None and fills missing ones with None.
                # Either way a delimiter was lost or added (an unquoted comma, a cut-off line), so the values
                # no longer line up with the columns and every field of the row is suspect.
                extra, missing = row.get(None) or [], [k for k, v in row.items() if v is None]
                if extra or missing:
                    raise DataError(
                        f"{path}:{start} (row {len(rows)}): has {len(header) - len(missing) + len(extra)} "
                        f"values for the header's {len(header)} columns ({', '.join(map(repr, header))}); "
                        "quote fields that contain the delimiter."
                    )
                rows.append((row, start))
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DataError(
                f"{path}:{start}: not valid CSV ({exc}); check the quoting of the row starting on this line."
            ) from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason}).") from None
    return rows


_READERS: dict[str, Callable[[Path], Located]] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".parquet": _read_parquet,
    ".csv": _read_csv,
}


def _read_folder(path: Path, split: str) -> list[Any]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(
            f"{path}: a folder must be written by datasets' save_to_disk ({_one_line(exc)}); for plain files give "
            "the file itself."
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"{path}: has no split {split!r}; its splits are {sorted(loaded)} "
                "(set data.train_split / data.eval_split)."
            )
        loaded = loaded[split]
    return loaded.to_list()


def _read_hub(name: str, split: str) -> list[Any]:
    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split)
        return loaded.to_list()
    except Exception as exc:  # the Hub client raises many unrelated types; all mean "cannot use this name"
        raise DataError(
            f"{name}: neither a local file or folder nor a dataset loadable from the Hugging Face Hub "
            f"with split {split!r} ({type(exc).__name__}: {_one_line(exc)})."
        ) from None


def select_rows(
    sources: list[list[RawRow]],
    names: list[str],
    probs: list[float] | None,
    max_samples: int | None,
    seed: int,
) -> tuple[list[RawRow], dict[str, dict[str, int]]]:
    """The rows to use, plus ``{name: {"rows": read, "used": drawn, "repeated": drawn beyond read}}``.

    With ``probs`` (say [3, 1], two sources of 100 rows, ``max_samples`` 40): source 0 gives
    round(0.75 * 40) = 30 rows and source 1 gives 10, each drawn from a seeded permutation of its source
    (further permutations follow when a source must give more rows than it has), then the draws are
    interleaved by a seeded shuffle. Without ``probs`` every row is used in order, and ``max_samples``
    keeps a seeded random subset, still in order.
    """
    counts = {
        name: {"rows": len(rows), "used": 0, "repeated": 0} for name, rows in zip(names, sources, strict=True)
    }
    if probs is None:
        chosen = [row for rows in sources for row in rows]
        if max_samples is not None and max_samples < len(chosen):
            rng = random.Random(f"preftune-subset-{seed}")
            chosen = [chosen[i] for i in sorted(rng.sample(range(len(chosen)), max_samples))]
    else:
        total = max_samples if max_samples is not None else sum(len(rows) for rows in sources)
        weight = sum(probs)
        chosen = []
        for i, rows in enumerate(sources):
            want = round(probs[i] / weight * total)
            rng = random.Random(f"preftune-mix-{seed}-{i}")
            drawn: list[RawRow] = []
            while len(drawn) < want:
                drawn.extend(rng.sample(rows, len(rows)))
            chosen.extend(drawn[:want])
        random.Random(f"preftune-interleave-{seed}").shuffle(chosen)
    for row in chosen:
        counts[row.source]["used"] += 1
    for c in counts.values():
        c["repeated"] = max(0, c["used"] - c["rows"])
    return chosen, counts
