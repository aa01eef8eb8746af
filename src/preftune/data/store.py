"""A tokenised store: a split's rows (a pair is a row of two responses) as columnar int32 ids in Arrow IPC
files, memory-mapped for reading, so nothing per token is a Python object until a row is asked for.

Folder ``<root>/<key[:32]>/``::

    source-<s>.arrow  Arrow IPC file per source s of the split; one row per source row the split draws, in
                      source order: index (int64, the row's place in its source), prompt (list<int32>),
                      responses (list<list<int32>>), scores (list<float64>), and what the build made of it:
                      drop (the reason, null when kept), example (the row quoted, for a drop), truncated,
                      merged (responses merged into another), plain_prompt (a plain-string prompt),
                      fit_drop (dropped while fitting to data.max_len, not while converting)
    rows.arrow        the split in order, kept rows only: source (int32, s) and row (int64, row of source-<s>)
    meta.json         {"version", "key", "sources", "rows", "report": the DataReport of the build}, written last

A row drawn several times (mixing with probabilities) is stored once and listed in rows.arrow each time.

A folder is complete when ``meta.json`` exists and names its key: the build writes everything into a
temporary sibling folder and renames it into place, so a build killed mid-write leaves only a ``.tmp-*``
folder nobody reads, and two builders of the same key cannot interleave (the second rename finds the first's
folder and drops its own copy). The key (:func:`store_key`) covers what decides the ids: each source's content,
the tokenizer, the data settings and the store format.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .items import Row

if TYPE_CHECKING:
    from ..config import DataConfig

FORMAT_VERSION = 2
SOURCE_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("prompt", pa.list_(pa.int32())),
        ("responses", pa.list_(pa.list_(pa.int32()))),
        ("scores", pa.list_(pa.float64())),
        ("drop", pa.string()),
        ("example", pa.string()),
        ("truncated", pa.bool_()),
        ("merged", pa.int32()),
        ("plain_prompt", pa.bool_()),
        ("fit_drop", pa.bool_()),
    ]
)
ROWS_SCHEMA = pa.schema([("source", pa.int32()), ("row", pa.int64())])
_WHOLE = 64 << 20  # sources up to this size are hashed whole (about 0.1 s)
_SAMPLE = 1 << 20  # bytes hashed at each of a larger file's start, middle and end
# Data settings that act after the store (shuffling, batching by length) or only say where the store lives
# and how it is built; every other one can change which rows are read or how they become ids.
# data.groups is read by nothing since every row shape trains alike; kept out so old configs share stores.
_AFTER_THE_STORE = {"shuffle", "group_by_length", "cache_dir", "num_proc", "groups"}
# Each split's own settings: the other split's never change this one's store.
_SPLIT_SETTINGS = {
    "train",
    "train_probs",
    "train_split",
    "max_samples",
    "eval",
    "eval_split",
    "eval_max_samples",
}


def source_fingerprint(path: Path) -> str:
    """A source's content hash when it holds at most 64 MiB (a rewrite with the same content keeps it); a
    larger one's size, modification time and a hash of 1 MiB at the start, middle and end of each of its
    files (a folder's in name order). The rule for large sources trades a full read for a check that catches
    every edit that changes a file's size or time, and edits in the sampled blocks that keep both."""
    h = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    whole = sum(file.stat().st_size for file in files) <= _WHOLE
    for file in files:
        stat = file.stat()
        h.update(f"{file.relative_to(path) if path.is_dir() else file.name}|{stat.st_size}|".encode())
        with file.open("rb") as fh:
            if whole:
                while block := fh.read(_SAMPLE):
                    h.update(block)
                continue
            h.update(f"{stat.st_mtime_ns}|".encode())
            for offset in (0, max(0, stat.st_size // 2 - _SAMPLE // 2), max(0, stat.st_size - _SAMPLE)):
                fh.seek(offset)
                h.update(fh.read(_SAMPLE))
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """The tokenizer's whole definition (vocabulary, merges, normaliser, special tokens) and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = (
        backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    )
    extra = {"special": tokenizer.special_tokens_map, "template": getattr(tokenizer, "chat_template", None),
             "class": type(tokenizer).__name__}  # fmt: skip
    h = hashlib.blake2b(digest_size=16)
    h.update(definition.encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def store_key(cfg: DataConfig, split: str, sources: Sequence[str], tokenizer: Any, seed: int) -> str:
    """The key of one split's store: its sources (by :func:`source_fingerprint` when local, else by name:
    a Hub dataset is keyed by name and split), the tokenizer, every data setting that can change ids (the
    split's own source settings, not the other split's), and the seed (it decides mixing) and the format
    version."""
    settings = asdict(cfg)
    own = {k: settings[k] for k in _SPLIT_SETTINGS if k.startswith(split)} | (
        {"max_samples": cfg.max_samples} if split == "train" else {}
    )
    shared = {k: v for k, v in settings.items() if k not in _AFTER_THE_STORE | _SPLIT_SETTINGS}
    located = [source_fingerprint(Path(s)) if Path(s).exists() else f"name:{s}" for s in sources]
    # The names too: a store's rows and its report name their sources as this run gives them.
    payload = {"version": FORMAT_VERSION, "split": split, "seed": seed, "sources": located,
               "names": list(sources),
               "tokenizer": tokenizer_fingerprint(tokenizer), "data": shared, "split_settings": own}  # fmt: skip
    return hashlib.blake2b(
        json.dumps(payload, sort_keys=True, default=str).encode(), digest_size=32
    ).hexdigest()


def is_complete(folder: Path, key: str) -> bool:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("key") == key and meta.get("version") == FORMAT_VERSION


@contextmanager
def building(root: Path, key: str) -> Iterator[Path]:
    """A private temporary folder to write the store of ``key`` into; on a clean exit it becomes
    ``<root>/<key[:32]>`` (unless another builder's complete store got there first, which is kept), and on
    any exit the temporary folder is gone. The caller writes ``meta.json`` last."""
    final = root / key[:32]
    tmp = root / f".tmp-{key[:32]}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final, key):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_meta(folder: Path, key: str, sources: list[str], rows: int, report: dict[str, Any]) -> None:
    meta = {"version": FORMAT_VERSION, "key": key, "sources": sources, "rows": rows, "report": report}
    (folder / "meta.json").write_text(json.dumps(meta))


class _SourceRows:
    """One source file's record batches, memory-mapped (no copy), and the first row of each."""

    def __init__(self, path: Path) -> None:
        reader = pa.ipc.open_file(pa.memory_map(str(path)))
        self.batches = [reader.get_batch(b) for b in range(reader.num_record_batches)]
        self.starts = np.cumsum([0] + [b.num_rows for b in self.batches])

    def locate(self, row: int) -> tuple[pa.RecordBatch, int]:
        b = int(np.searchsorted(self.starts, row, side="right")) - 1
        return self.batches[b], row - int(self.starts[b])

    def per_row(self, measure: Any) -> np.ndarray:
        """``measure(batch)`` (one int per row) over all batches, as one array."""
        return np.concatenate([np.zeros(0, dtype=np.int64)] + [measure(b) for b in self.batches])


class RowStore(Sequence[Row]):
    """The rows of a complete store folder, memory-mapped: ``store[i]`` builds one :class:`Row`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.reused = True  # found complete, not built by this process (load.open_split sets both)
        self.build_seconds = 0.0
        self.temporary: Any = None  # a temporary cache folder that must live as long as the store
        self.names: list[str] = self.meta["sources"]
        rows = pa.ipc.open_file(pa.memory_map(str(folder / "rows.arrow"))).read_all()
        self._source = rows.column("source").to_numpy()
        self._row = rows.column("row").to_numpy()
        self._sources = [_SourceRows(folder / f"source-{s}.arrow") for s in range(len(self.names))]

    def __len__(self) -> int:
        return len(self._row)

    @overload
    def __getitem__(self, i: int) -> Row: ...
    @overload
    def __getitem__(self, i: slice) -> list[Row]: ...
    def __getitem__(self, i: int | slice) -> Row | list[Row]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} of a store of {len(self)}")
        s = int(self._source[i])
        batch, row = self._sources[s].locate(int(self._row[i]))
        responses = batch.column("responses")[row].values  # list<int32> per response
        offsets, flat = responses.offsets.to_numpy(), responses.values.to_numpy()
        return Row(
            batch.column("prompt")[row].values.to_numpy().tolist(),
            [flat[a:b].tolist() for a, b in itertools.pairwise(offsets)],
            batch.column("scores")[row].values.to_numpy().tolist(),
            self.names[s],
            int(batch.column("index")[row].as_py()),
        )

    def _per_row(self, measure: Any) -> np.ndarray:
        """``measure(batch)`` for each source row, picked out for each store row."""
        out = np.empty(len(self), dtype=np.int64)
        for s, source in enumerate(self._sources):
            mine = self._source == s
            out[mine] = source.per_row(measure)[self._row[mine]]
        return out

    def response_counts(self) -> np.ndarray:
        return self._per_row(lambda b: _lengths(b.column("responses")))

    def lengths(self) -> np.ndarray:
        """Per group: prompt tokens plus all its response tokens, read from the offsets alone."""
        return self._per_row(lambda b: _prompt_plus(b, np.add.reduceat))

    def widths(self) -> np.ndarray:
        """Per group: prompt tokens plus its longest response's (a padded row's width)."""
        return self._per_row(lambda b: _prompt_plus(b, np.maximum.reduceat))


def _lengths(lists: pa.Array) -> np.ndarray:
    return pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)


def _prompt_plus(batch: pa.RecordBatch, reduce: Any) -> np.ndarray:
    """Per row: prompt length plus ``reduce`` over its response lengths (0 for a dropped row: none)."""
    responses = batch.column("responses")
    counts = _lengths(responses)
    lengths = _lengths(pc.list_flatten(responses))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    per_row = np.zeros(len(counts), dtype=np.int64)
    has = counts > 0  # reduceat needs non-empty segments; a dropped row's empty one adds nothing
    if has.any():
        per_row[has] = reduce(lengths, starts[has])
    return _lengths(batch.column("prompt")) + per_row
