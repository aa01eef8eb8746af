"""Building one split's store, in bounded memory and in parallel.

Order of work: count each source's rows; draw the split's rows from the counts (select.py); read each source
in chunks, and in ``data.num_proc`` worker processes turn each chunk's drawn rows into texts (rows.py),
token ids and truncation (tokenize.py), one Arrow record batch per chunk written in source order; then walk
the draw in order to count drops, truncation and merges into the report, and list the kept rows. A drawn row
is converted once however often it is drawn, and the report counts it each time, as the draw does.

A problem with a file or the configuration raises :class:`DataError` naming the row (the first in source
order); a row that fails a per-row check is a drop, counted under its reason.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import DataConfig
from .errors import DataError, DropRow
from .report import DataReport, quote_row
from .rows import GroupText, RowConverter
from .select import Draw, draw_rows
from .sources import RawRow, count_rows, iter_source, read_source
from .store import ROWS_SCHEMA, SOURCE_SCHEMA, building, write_meta
from .tokenize import TextEncoder, encode_groups, fit_group

CHUNK_ROWS = 2048  # rows per chunk: a worker's unit of work and one record batch of a source file
# Below this many chunks a source is converted in this process: starting workers costs more than it saves.
_PARALLEL_FROM_CHUNKS = 4


@dataclass
class SplitSources:
    """One split's sources as the configuration gives them."""

    split: str
    names: list[str]
    probs: list[float] | None
    hf_split: str
    limit: int | None


class ChunkConverter:
    """Rows of one chunk -> one record batch of :data:`SOURCE_SCHEMA` (a worker process holds one)."""

    def __init__(self, cfg: DataConfig, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.convert = RowConverter(cfg, tokenizer)
        self.encoder = TextEncoder(tokenizer)
        self.bos = getattr(tokenizer, "bos_token_id", None)

    def __call__(self, rows: list[RawRow]) -> pa.RecordBatch:
        out: dict[str, list[Any]] = {name: [] for name in SOURCE_SCHEMA.names}
        texts: list[tuple[int, GroupText]] = []
        for i, row in enumerate(rows):
            _append(out, row.index)
            try:
                texts.append((i, self.convert.group(row)))
            except DropRow as drop:
                _set(out, i, drop=drop.reason, example=quote_row(row.data))
        encoded = encode_groups([text for _, text in texts], self.tokenizer, self.encoder)
        for (i, text), (prompt, responses) in zip(texts, encoded, strict=True):
            out["plain_prompt"][i] = text.prompt_special_tokens
            try:
                p, cut, scores, truncated = fit_group(prompt, responses, text.scores, self.cfg, self.bos)
            except DropRow as drop:
                _set(out, i, drop=drop.reason, example=quote_row(rows[i].data), fit_drop=True)
                continue
            _set(out, i, prompt=p, responses=cut, scores=scores, truncated=truncated,
                 merged=text.merged + len(responses) - len(cut))  # fmt: skip
        return pa.RecordBatch.from_pydict(out, schema=SOURCE_SCHEMA)


def _append(out: dict[str, list[Any]], index: int) -> None:
    """A row as dropped-with-no-reason-yet: every field at its empty value, to be overwritten by _set."""
    for name, empty in (("index", index), ("prompt", []), ("responses", []), ("scores", []), ("drop", None),
                        ("example", None), ("truncated", False), ("merged", 0), ("plain_prompt", False),
                        ("fit_drop", False)):  # fmt: skip
        out[name].append(empty)


def _set(out: dict[str, list[Any]], i: int, **values: Any) -> None:
    for name, value in values.items():
        out[name][i] = value


def build_split(
    root: Path, key: str, sources: SplitSources, converter: ChunkConverter, seed: int, num_proc: int
) -> Path:
    """Build the store of ``key`` under ``root`` and return its folder (an existing complete one wins)."""
    counts = [_count(name, sources.hf_split) for name in sources.names]
    draw = draw_rows(sources.names, counts, sources.probs, sources.limit, seed)
    report = DataReport(sources.split, converter.cfg.report_examples, draw.counts, rows_read=len(draw.index))
    with building(root, key) as tmp, _Workers(converter, num_proc) as workers:
        for s, name in enumerate(sources.names):
            path = tmp / f"source-{s}.arrow"
            seen = _write_source(path, name, sources.hf_split, draw.needed(s, counts[s]), workers)
            if seen != counts[s]:
                raise DataError(
                    f"{name}: changed while it was read ({counts[s]} rows counted, then {seen} read); "
                    "rerun once it is completely written."
                )
        rows = _tally(tmp, draw, report, bool(converter.convert.has_template))
        with pa.OSFile(str(tmp / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, ROWS_SCHEMA) as writer:
            writer.write_table(pa.table(rows, schema=ROWS_SCHEMA))
        # The hint about plain prompts stays out of data_report.json, but a reused store must still give it.
        summary = report.to_dict() | {"untemplated_prompts": report.untemplated_prompts}
        write_meta(tmp, key, sources.names, len(rows["row"]), summary)
    return root / key[:32]


def _count(name: str, hf_split: str) -> int:
    rows = count_rows(name, hf_split)
    if rows == 0:
        read_source(name, hf_split)  # raises the error that says the source holds no rows
    return rows


def _write_source(path: Path, name: str, hf_split: str, needed: np.ndarray, workers: _Workers) -> int:
    """Convert the drawn rows (``needed``, a mask over the source's rows) of one source into ``path``, one
    record batch per chunk read; returns how many rows the source gave."""
    seen = 0

    def drawn_chunks() -> Iterator[list[RawRow]]:
        nonlocal seen
        for chunk in iter_source(name, hf_split, CHUNK_ROWS):
            seen += len(chunk)
            rows = [row for row in chunk if row.index < len(needed) and needed[row.index]]
            if rows:
                yield rows

    parallel = int(needed.sum()) >= _PARALLEL_FROM_CHUNKS * CHUNK_ROWS
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, SOURCE_SCHEMA) as writer:
        for batch in workers.map(drawn_chunks(), parallel):
            writer.write_batch(batch)
    return seen


def _tally(folder: Path, draw: Draw, report: DataReport, has_template: bool) -> dict[str, np.ndarray]:
    """Count every draw into ``report`` in draw order (drops made while converting first, then those made
    while fitting to data.max_len, as the conversion runs before the fitting); return the kept draws as
    rows.arrow's columns."""
    n = len(draw.index)
    row = np.zeros(n, dtype=np.int64)
    fields: dict[str, np.ndarray] = {"truncated": np.zeros(n, bool), "merged": np.zeros(n, np.int64),
                                     "plain_prompt": np.zeros(n, bool), "fit_drop": np.zeros(n, bool)}  # fmt: skip
    dropped = np.zeros(n, dtype=bool)
    quoted: dict[int, tuple[str, str]] = {}  # draw -> (reason, quoted row), for dropped draws only
    for s in range(len(draw.counts)):
        table = pa.ipc.open_file(pa.memory_map(str(folder / f"source-{s}.arrow"))).read_all()
        mine = np.flatnonzero(draw.source == s)
        row[mine] = np.searchsorted(table.column("index").to_numpy(), draw.index[mine])
        for name, values in fields.items():
            values[mine] = table.column(name).to_numpy(zero_copy_only=False)[row[mine]]
        dropped[mine] = table.column("drop").is_valid().to_numpy(zero_copy_only=False)[row[mine]]
        reasons, examples = table.column("drop"), table.column("example")
        for d in mine[dropped[mine]]:
            quoted[int(d)] = (reasons[int(row[d])].as_py(), examples[int(row[d])].as_py())
    names = list(draw.counts)
    for late in (False, True):
        for d in np.flatnonzero(dropped & (fields["fit_drop"] == late)):
            reason, text = quoted[int(d)]
            report.drop(reason, names[draw.source[d]], int(draw.index[d]), text)
    kept = ~dropped
    report.kept = int(kept.sum())
    report.truncated = int(fields["truncated"][kept].sum())
    report.merged_responses = int(fields["merged"][kept].sum())
    if has_template:
        report.untemplated_prompts = int(fields["plain_prompt"].sum())
    return {"source": draw.source[kept], "row": row[kept]}


class _Workers:
    """Chunks converted in order, by ``num_proc`` worker processes or, for a small source, in this one.

    Workers are forked, as torch's DataLoader workers are: they inherit the converter (tokenizer included)
    without pickling and start in milliseconds, where a spawned worker would import torch and re-run the
    caller's main script. At most two chunks per worker are in flight, so memory holds a few chunks at once
    whatever the source's size.
    """

    def __init__(self, converter: ChunkConverter, num_proc: int) -> None:
        self.converter = converter
        self.num_proc = num_proc
        self._pool: ProcessPoolExecutor | None = None
        self._parallelism: str | None = None

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is None:
            return
        self._pool.shutdown(cancel_futures=True)
        if self._parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = self._parallelism

    def map(self, chunks: Iterator[list[RawRow]], parallel: bool) -> Iterator[pa.RecordBatch]:
        if not parallel or self.num_proc < 2:
            yield from map(self.converter, chunks)
            return
        pool = self._start()
        pending: deque[Future[pa.RecordBatch]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(_convert, chunk))
            if len(pending) >= 2 * self.num_proc:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # One worker per core already: the tokenizer's own thread pool would only oversubscribe the
            # cores (and, set before the fork, the variable stops it warning that it was forked).
            self._parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(
                self.num_proc,
                mp_context=multiprocessing.get_context(method),
                initializer=_start_worker,
                initargs=(self.converter,),
            )
        return self._pool


_WORKER: ChunkConverter | None = None


def _start_worker(converter: ChunkConverter) -> None:
    global _WORKER
    _WORKER = converter


def _convert(rows: list[RawRow]) -> pa.RecordBatch:
    assert _WORKER is not None
    return _WORKER(rows)


def default_num_proc() -> int:
    """One worker per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
