"""One reader per file format, each yielding ``(row value, 1-based line or None)`` one row at a time.

The readers hold a block of the file (``.jsonl``), the csv module's buffer (``.csv``) or one batch
(``.parquet``), never the whole file, so :func:`~.sources.iter_source` can read a source larger than memory.
``.json`` is the exception: one JSON document, which the standard library can only parse whole.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DataError

Located = tuple[Any, int | None]  # (row value, 1-based line or None)

# How much of a .jsonl file is read at a time; a line longer than this is gathered over several blocks.
_BLOCK_BYTES = 4 * 2**20
# JSON lines end at \n, \r\n or \r only. str.splitlines() also splits at U+2028, U+2029 and U+0085, which JSON
# allows raw inside strings (json.dumps(ensure_ascii=False) writes them), so it would cut valid rows in two.
# On bytes none of those three contains a \r or \n byte (nor does any UTF-8 multi-byte sequence), so
# splitting before decoding cuts exactly where splitting the decoded text would.
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)")
# The ASCII characters str.strip() removes: besides the usual six, \x1c-\x1f count as whitespace to Python.
_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())


def one_line(exc: BaseException) -> str:
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


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """``(1-based line number, byte offset of the line, the line's bytes with its line end)`` for every line.

    Offsets count from after a leading UTF-8 BOM, which is skipped as utf-8-sig would: that is where the
    whole-file decode this replaced counted from, so "at byte N" in an error keeps its meaning.
    """
    with path.open("rb") as f:
        head = f.read(len(codecs.BOM_UTF8))  # read on its own so that a tiny block size still sees all three
        pending = bytearray(b"" if head == codecs.BOM_UTF8 else head)
        # start: the offset of pending[0]; searched: how many bytes of pending are known to hold no line end.
        line_no, start, searched = 1, 0, 0
        while True:
            block = f.read(_BLOCK_BYTES)
            pending += block
            # A \r last in the block may be the first half of a \r\n: keep it back until the next block shows.
            end = len(pending) - 1 if block and pending.endswith(b"\r") else len(pending)
            # Search only the new bytes, so a line spanning many blocks costs linear, not quadratic, time.
            last = max(pending.rfind(b"\n", searched, end), pending.rfind(b"\r", searched, end))
            if last >= 0:
                for match in _LINE.finditer(pending, 0, last + 1):
                    yield line_no, start + match.start(), match.group()
                    line_no += 1
                del pending[: last + 1]
                start += last + 1
            if not block:
                if pending:  # the last line, without a line end
                    yield line_no, start, bytes(pending)
                return
            searched = max(len(pending) - 1, 0)  # only a held-back \r can end a line in what is left


def _decode_line(raw: bytes, path: Path, line_no: int, offset: int) -> str:
    # The line is decoded with its line end (ASCII, so it decodes as itself): a multi-byte sequence cut short
    # by the line end then reads "invalid continuation byte", as it did when the whole file was decoded at once.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}:{line_no}: not UTF-8 text ({exc.reason} at byte {offset + exc.start})."
        ) from None


def iter_jsonl(path: Path) -> Iterator[Located]:
    for line_no, offset, raw in _lines(path):
        text = _decode_line(raw, path, line_no, offset)
        if not text.strip():
            continue
        # Without its line end: json.loads would count a trailing \n into the position of an error.
        text = text.rstrip("\r\n")
        try:
            yield _loads(text, f"{path}:{line_no}"), line_no
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}:{line_no}: not valid JSON ({exc.msg}: column {exc.colno}); each line of a "
                ".jsonl file must be one JSON object."
            ) from None


def _is_blank(raw: bytes) -> bool:
    """Whether a line's bytes are whitespace only once decoded, decoding only lines with non-ASCII bytes."""
    rest = raw.strip(_ASCII_SPACE)
    if not rest or rest.isascii():
        return not rest
    # Bytes that are not UTF-8 become U+FFFD, which is not whitespace: the line counts, and reading it fails.
    return not rest.decode("utf-8", "replace").strip()


def count_jsonl(path: Path) -> int:
    """The rows :func:`iter_jsonl` would give for a valid file, without parsing any JSON."""
    return sum(1 for _, _, raw in _lines(path) if not _is_blank(raw))


def _json_value(path: Path) -> list[Any] | None:
    """The rows of a .json file, or None when it holds several top-level values (JSON lines, named .json)."""
    text = _read_text(path)
    try:
        value = _loads(text, str(path))
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            return None
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}: column {exc.colno}).") from None
    if isinstance(value, dict):
        for key in ("data", "train"):
            if isinstance(value.get(key), list):
                return list(value[key])
        raise DataError(
            f"{path}: a .json file must hold a list of rows or an object with a 'data' or 'train' "
            f"list; found an object with keys {sorted(value)}."
        )
    if not isinstance(value, list):
        raise DataError(f"{path}: a .json file must hold a list of rows, found {type(value).__name__}.")
    return value


def iter_json(path: Path) -> Iterator[Located]:
    rows = _json_value(path)
    if rows is None:
        # Read again as JSON lines, from the file: one path for that format, and the text is not kept meanwhile.
        yield from iter_jsonl(path)
        return
    for row in rows:
        yield row, None


def parquet_rows(path: Path) -> int:
    """The row count a Parquet file's footer records, read without reading any data."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return int(pq.read_metadata(path).num_rows)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot be read as Parquet ({one_line(exc)}).") from None


def iter_parquet(path: Path, batch_rows: int) -> Iterator[Located]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    unreadable = (pa.ArrowException, OSError)
    try:
        with pq.ParquetFile(path) as file:
            batches = file.iter_batches(batch_size=batch_rows)
            # The try spans the whole loop: a broken page deep in the file shows only when its batch is read.
            for batch in batches:
                yield from ((row, None) for row in _batch_rows(path, batch))
    except unreadable as exc:
        raise DataError(f"{path}: cannot be read as Parquet ({one_line(exc)}).") from None


def _batch_rows(path: Path, batch: Any) -> list[Any]:
    import pyarrow as pa

    unconvertible = (pa.ArrowException, ValueError, OverflowError)
    try:
        return list(batch.to_pylist())
    except unconvertible as exc:
        # Every column is converted, used or not, and some Arrow values have no Python equivalent (a
        # timestamp past year 9999 raises OverflowError, a name or string that is not UTF-8 a
        # UnicodeDecodeError); find the column so the message can name it. Searching this batch is enough:
        # the failing value is in it.
        bad = []
        for i in range(batch.num_columns):
            try:
                batch.column(i).to_pylist()
                continue
            except unconvertible:
                pass
            try:
                bad.append(repr(batch.schema.field(i).name))
            except unconvertible:
                bad.append(f"number {i + 1}")
        what = f"column(s) {', '.join(bad)}" if bad else "the column names"
        # A DataError, which the caller's `except unreadable` does not catch (it is no Arrow or OS error).
        raise DataError(
            f"{path}: {what} cannot be converted to Python values "
            f"({type(exc).__name__}: {one_line(exc)}); remove or fix them."
        ) from None


def iter_csv(path: Path) -> Iterator[Located]:
    # Long answers exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    # newline="" lets the csv module see quoted newlines inside a field.
    with path.open(encoding="utf-8-sig", newline="") as f:
        # strict: a quote left open (a file cut off mid-field) is an error, not one field swallowing the rest
        # of the file, which would silently turn every later row into text of that one.
        reader = csv.DictReader(f, strict=True)
        start = 1  # first line of the row being read: reader.line_num lags when a row ends in an error
        try:
            if reader.fieldnames is None:  # reads the header; None for an empty file
                return
            header = reader.fieldnames
            start = reader.line_num + 1
            for index, row in enumerate(reader):
                # DictReader puts values past the header under the key None and fills missing ones with None.
                # Either way a delimiter was lost or added (an unquoted comma, a cut-off line), so the values
                # no longer line up with the columns and every field of the row is suspect.
                extra, missing = row.get(None) or [], [k for k, v in row.items() if v is None]
                if extra or missing:
                    raise DataError(
                        f"{path}:{start} (row {index}): has {len(header) - len(missing) + len(extra)} "
                        f"values for the header's {len(header)} columns ({', '.join(map(repr, header))}); "
                        "quote fields that contain the delimiter."
                    )
                yield row, start
                start = reader.line_num + 1
        except csv.Error as exc:
            raise DataError(
                f"{path}:{start}: not valid CSV ({exc}); check the quoting of the row starting on this line."
            ) from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc.reason}).") from None


def iter_dataset(dataset: Any, chunk_rows: int) -> Iterator[Located]:
    """The rows of a ``datasets.Dataset``, converted ``chunk_rows`` at a time.

    The dataset is memory-mapped Arrow, so only the converted slice is held in Python objects. ``select`` of a
    contiguous range is a view, not a copy, and ``to_list`` on it converts exactly as on the whole dataset
    (JSON-typed fields decoded included).
    """
    total = len(dataset)
    for start in range(0, total, chunk_rows):
        for row in dataset.select(range(start, min(start + chunk_rows, total))).to_list():
            yield row, None
