"""A tokenised store: prompt groups (a pair is a group of two) as columnar int32 ids in an Arrow IPC file,
memory-mapped for reading, so nothing per token is a Python object until a row is asked for.

Folder ``<root>/<key[:32]>/``::

    groups.arrow   Arrow IPC file; one row per group: prompt (list<int32>), responses (list<list<int32>>),
                   scores (list<float64>), source (dictionary<string>), index (int64)
    meta.json      {"version", "key", "rows", "report": the DataReport of the build}, written last

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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .load import TokenizedGroup

if TYPE_CHECKING:
    from ..config import DataConfig

FORMAT_VERSION = 1
SCHEMA = pa.schema(
    [
        ("prompt", pa.list_(pa.int32())),
        ("responses", pa.list_(pa.list_(pa.int32()))),
        ("scores", pa.list_(pa.float64())),
        ("source", pa.dictionary(pa.int32(), pa.string())),
        ("index", pa.int64()),
    ]
)
_SAMPLE = 1 << 20  # bytes hashed at each of a source file's start, middle and end
# Data settings that change which rows are read or how they become ids; the others (shuffling, batching by
# length, how many examples the report keeps) act after the store and leave it valid.
_AFTER_THE_STORE = {"shuffle", "group_by_length", "report_examples"}


def source_fingerprint(path: Path) -> str:
    """Size, modification time and a hash of 1 MiB at the start, middle and end of a file (or of each file of
    a folder, in name order). The rule trades a full read of a large file for a check that catches every
    edit that changes its size or time, and edits in the sampled blocks that keep both."""
    h = hashlib.blake2b(digest_size=16)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        stat = file.stat()
        h.update(
            f"{file.relative_to(path) if path.is_dir() else file.name}|{stat.st_size}|{stat.st_mtime_ns}|".encode()
        )
        with file.open("rb") as fh:
            for offset in sorted(
                {0, max(0, stat.st_size // 2 - _SAMPLE // 2), max(0, stat.st_size - _SAMPLE)}
            ):
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
    """The key of one split's store: sources (by :func:`source_fingerprint` when local, else by name), the
    tokenizer, every data setting that changes ids, the seed (it decides mixing) and the format version."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in _AFTER_THE_STORE}
    located = [source_fingerprint(Path(s)) if Path(s).exists() else f"name:{s}" for s in sources]
    payload = {"version": FORMAT_VERSION, "split": split, "seed": seed, "sources": located,
               "tokenizer": tokenizer_fingerprint(tokenizer), "data": settings}  # fmt: skip
    return hashlib.blake2b(
        json.dumps(payload, sort_keys=True, default=str).encode(), digest_size=32
    ).hexdigest()


def _batches(groups: Iterable[TokenizedGroup], rows_per_batch: int) -> Iterator[pa.RecordBatch]:
    chunk: list[TokenizedGroup] = []
    for group in groups:
        chunk.append(group)
        if len(chunk) == rows_per_batch:
            yield _record_batch(chunk)
            chunk = []
    if chunk:
        yield _record_batch(chunk)


def _record_batch(chunk: list[TokenizedGroup]) -> pa.RecordBatch:
    columns = [
        pa.array([g.prompt_ids for g in chunk], SCHEMA.field("prompt").type),
        pa.array([g.responses for g in chunk], SCHEMA.field("responses").type),
        pa.array([g.scores for g in chunk], SCHEMA.field("scores").type),
        pa.array([g.source for g in chunk], pa.string()).dictionary_encode(),
        pa.array([g.index for g in chunk], pa.int64()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def write_store(
    root: Path, key: str, groups: Iterable[TokenizedGroup], report: dict[str, Any], rows_per_batch: int = 4096
) -> Path:
    """Write ``groups`` (any iterable: consumed ``rows_per_batch`` rows at a time, so a build holds one batch)
    as the store of ``key`` under ``root``; returns its folder. An existing complete store of the key wins."""
    final = root / key[:32]
    tmp = root / f".tmp-{key[:32]}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        rows = 0
        with pa.OSFile(str(tmp / "groups.arrow"), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
            for batch in _batches(groups, rows_per_batch):
                writer.write_batch(batch)
                rows += batch.num_rows
        meta = {"version": FORMAT_VERSION, "key": key, "rows": rows, "report": report}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final, key):  # another builder's complete store of this key is kept
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def is_complete(folder: Path, key: str) -> bool:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("key") == key and meta.get("version") == FORMAT_VERSION


class GroupStore(Sequence[TokenizedGroup]):
    """The groups of a store folder, memory-mapped: ``store[i]`` builds one :class:`TokenizedGroup`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self._table = pa.ipc.open_file(pa.memory_map(str(folder / "groups.arrow"))).read_all()
        self._prompt, self._responses = self._table.column("prompt"), self._table.column("responses")
        self._scores, self._source = self._table.column("scores"), self._table.column("source")
        self._index = self._table.column("index")

    def __len__(self) -> int:
        return self._table.num_rows

    @overload
    def __getitem__(self, i: int) -> TokenizedGroup: ...
    @overload
    def __getitem__(self, i: slice) -> list[TokenizedGroup]: ...
    def __getitem__(self, i: int | slice) -> TokenizedGroup | list[TokenizedGroup]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"group {i} of a store of {len(self)}")
        i %= len(self)
        responses = self._responses[i].values  # one list<int32> per response; offsets index its values
        offsets, flat = responses.offsets.to_numpy(), responses.values.to_numpy()
        return TokenizedGroup(
            self._prompt[i].values.to_numpy().tolist(),
            [flat[a:b].tolist() for a, b in itertools.pairwise(offsets)],
            self._scores[i].values.to_numpy().tolist(),
            str(self._source[i].as_py()),
            int(self._index[i].as_py()),
        )

    def lengths(self) -> np.ndarray:
        """Per group: prompt tokens plus all its response tokens, read from the offsets alone."""
        prompt = pc.list_value_length(self._prompt).to_numpy()
        counts = pc.list_value_length(self._responses).to_numpy()
        per_response = pc.list_value_length(pc.list_flatten(self._responses)).to_numpy()
        running = np.concatenate([[0], np.cumsum(per_response)])
        ends = np.cumsum(counts)
        return prompt + running[ends] - running[ends - counts]
