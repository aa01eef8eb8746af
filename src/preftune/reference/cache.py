"""The reference log-prob cache: content hashes that key it, its file format, and the reference that reads it.

A cache file holds, for one split of tokenised rows (pairs and rows of K responses), every response's summed
reference log-prob and token count, row after row: a pair is a row of two responses, chosen then rejected. Its key is a
hash of (reference weights, model config, compute precision, tokenised rows), so a later run over the same data
with the same reference reuses it and any change to either makes a new key: a stale cache is never read, only
left unused.

File (``<cache_dir>/<split>-<key[:32]>.refcache``)::

    PREFTUNE-REFCACHE\\n
    {"version": 2, "key": ..., "split": "train", "rows": N, "responses": R, "payload_bytes": 8(N+1)+16R,
     "payload_blake2b": ..., ...}\\n
    payload: int64 little-endian row offsets (N+1), then float64 little-endian, 2 rows of R: logps, tokens
"""

from __future__ import annotations

import hashlib
import json
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ..layouts import Batch
from ..model.lora import base_state_dict, is_peft_model
from ..model.responses import ResponseForward

if TYPE_CHECKING:
    from ..data import Row

# 2: one table of responses with row offsets, for pairs and prompt groups alike (1 held pairs only).
FORMAT_VERSION = 2
MAGIC = b"PREFTUNE-REFCACHE\n"
# Config entries that say how a model is loaded or what it returns, never what it computes: a reference
# loaded from another folder, or saved by another transformers version, keeps its key.
_CONFIG_NOISE = {
    "_name_or_path", "transformers_version", "use_cache", "dtype", "torch_dtype", "return_dict",
    "output_hidden_states", "output_attentions", "id2label", "label2id", "_attn_implementation",
    "_attn_implementation_autoset", "_commit_hash",
}  # fmt: skip


def _hasher() -> Any:
    return hashlib.blake2b(digest_size=32)


def reference_fingerprint(model: nn.Module) -> str:
    """Hash of the model's weights (names, dtypes, shapes and bytes, in name order) and its config.

    Tied tensors (an LM head sharing the embedding's storage) are hashed once and referred to by name after.
    Bytes are hashed through a uint8 view of the tensor's own storage, so no copy is made of a CPU tensor.
    A LoRA-wrapped model is hashed by its base weights under their plain names: the adapters-off reference.
    """
    h = _hasher()
    config = getattr(model, "config", None)
    if config is not None:
        settings = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_NOISE}
        h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    first_name: dict[tuple[int, torch.dtype, tuple[int, ...]], str] = {}
    weights = base_state_dict(model.state_dict()) if is_peft_model(model) else model.state_dict()
    for name, tensor in sorted(weights.items()):
        t = tensor.detach()
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        storage = (t.data_ptr(), t.dtype, tuple(t.shape))
        if t.numel() and storage in first_name:
            h.update(f"same as {first_name[storage]}".encode())
            continue
        first_name[storage] = name
        flat = t.contiguous().reshape(-1).view(torch.uint8)
        h.update(memoryview(flat.cpu().numpy()))
    return h.hexdigest()


def rows_fingerprint(rows: Sequence[Row]) -> str:
    """Hash of the tokenised rows in order: each row's prompt ids and its responses' ids in order, every list
    with its length. Scores are left out: they never change a reference log-prob, so rescoring the same
    responses reuses the cache. A pair hashes as the group [chosen, rejected]: the same log-probs."""
    h = _hasher()
    h.update(f"{len(rows)} rows".encode())
    for row in rows:
        h.update(len(row.responses).to_bytes(8, "little"))
        for ids in (row.prompt_ids, *row.responses):
            h.update(len(ids).to_bytes(8, "little"))
            h.update(array("q", ids).tobytes())
    return h.hexdigest()


def cache_key(reference: str, compute: str, data: str, ld_alpha: float | None = None) -> str:
    """The key of one split's cache: everything that changes its numbers beyond float rounding.

    ``compute`` names the precision the reference runs in (e.g. FSDP2 bf16 mixed precision); the batch layout
    and LM-head chunk size are left out, as they change the log-probs only at float32 rounding level.
    ``ld_alpha`` (LD-DPO) changes what a response's sum is; without it the key is what it always was, so caches
    written before the option existed stay valid.
    """
    h = _hasher()
    summed = "" if ld_alpha is None else f"|ld_alpha={ld_alpha!r}"
    h.update(f"preftune-ref-cache/v{FORMAT_VERSION}|{reference}|{compute}|{data}{summed}".encode())
    return h.hexdigest()


def cache_path(cache_dir: Path, split: str, key: str) -> Path:
    return cache_dir / f"{split}-{key[:32]}.refcache"


def row_offsets(widths: Sequence[int]) -> Tensor:
    """Where each row's responses start in a table, and where the last one ends: widths [2, 3] -> [0, 2, 5]."""
    offsets = torch.zeros(len(widths) + 1, dtype=torch.long)
    offsets[1:] = torch.tensor(list(widths), dtype=torch.long).cumsum(0)
    return offsets


@dataclass
class RefTable:
    """Per-response reference results of N rows: ``values`` float64 (2, R) holds summed log-probs and token
    counts, and row i's responses are slots ``offsets[i]:offsets[i+1]`` (int64 (N+1,)) in the row's order.

    Example: a pair, then a group of three: offsets [0, 2, 5]; slot 0 is the chosen response, 1 the rejected.
    float64 holds the float32 values the model produced exactly; ``dtype`` is what they are handed back as.
    """

    values: Tensor
    offsets: Tensor
    dtype: torch.dtype = torch.float32

    @classmethod
    def empty(cls, widths: Sequence[int]) -> RefTable:
        """A zero table for rows of ``widths`` responses each."""
        offsets = row_offsets(widths)
        return cls(torch.zeros(2, int(offsets[-1]), dtype=torch.float64), offsets)

    @classmethod
    def concat(cls, tables: Sequence[RefTable]) -> RefTable:
        """One table of every table's rows, in order (a run's train rows, then its eval rows)."""
        if not tables:
            return cls.empty([])
        widths = [w for t in tables for w in t.offsets.diff().tolist()]
        return cls(torch.cat([t.values for t in tables], dim=1), row_offsets(widths), tables[0].dtype)

    @property
    def num_rows(self) -> int:
        return int(self.offsets.numel()) - 1

    def slots(self, row_ids: Tensor, batch: Batch) -> Tensor:
        """(S,) the slot of each of ``batch``'s sequences, whose batch row b is table row ``row_ids[b]``.

        A row's sequences come in its responses' order in every layout, so the k-th sequence of batch row b
        is slot ``offsets[row_ids[b]] + k``. Raises when a batch row has another number of responses than
        its table row: the ids point at other rows than the batch holds.
        """
        rows = batch.sequence_row.cpu()
        counts = torch.bincount(rows, minlength=row_ids.numel())
        starts = self.offsets[row_ids]
        if not torch.equal(counts, self.offsets[row_ids + 1] - starts):
            raise RuntimeError(
                "cached reference response counts do not match the batch: row ids are misaligned"
            )
        order = torch.argsort(rows, stable=True)  # sequences grouped by row, each row's in response order
        rank = torch.empty_like(rows)
        rank[order] = torch.arange(rows.numel()) - (counts.cumsum(0) - counts)[rows[order]]
        return starts[rows] + rank

    def put(self, slots: Tensor, out: ResponseForward) -> None:
        self.values[:, slots] = torch.stack([out.logps, out.tokens]).detach().to("cpu", torch.float64)
        self.dtype = out.logps.dtype


class CacheUnusable(Exception):
    """A cache file that exists but cannot be trusted (truncated, corrupt, another key); it gets recomputed."""


def write_cache(path: Path, table: RefTable, header: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, fsynced, then renamed over ``path``."""
    payload = (
        table.offsets.contiguous().numpy().astype("<i8", copy=False).tobytes()
        + table.values.contiguous().numpy().astype("<f8", copy=False).tobytes()
    )
    head = {
        **header,
        "version": FORMAT_VERSION,
        "rows": table.num_rows,
        "responses": int(table.values.shape[1]),
        "dtype": str(table.dtype).removeprefix("torch."),
        "payload_bytes": len(payload),
        "payload_blake2b": hashlib.blake2b(payload, digest_size=32).hexdigest(),
        "torch": torch.__version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        with tmp.open("wb") as fh:
            fh.write(MAGIC + json.dumps(head).encode() + b"\n" + payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _split_file(raw: bytes) -> tuple[dict[str, Any], bytes]:
    if not raw.startswith(MAGIC):
        raise CacheUnusable("not a preftune reference cache file")
    head_end = raw.find(b"\n", len(MAGIC))
    try:
        head = json.loads(raw[len(MAGIC) : head_end]) if head_end > 0 else None
    except ValueError:
        head = None
    if not isinstance(head, dict):
        raise CacheUnusable("its header is damaged")
    return head, raw[head_end + 1 :]


def cache_header(path: Path) -> dict[str, Any]:
    """The JSON header of a cache file (key, split, pairs, hashes, versions); raises :class:`CacheUnusable`."""
    with path.open("rb") as fh:
        return _split_file(fh.read(len(MAGIC)) + fh.readline())[0]


def read_cache(path: Path, key: str, split: str, widths: Sequence[int]) -> RefTable:
    """The table stored at ``path`` for rows of ``widths`` responses each; raises :class:`CacheUnusable`
    saying why it cannot be used."""
    head, payload = _split_file(path.read_bytes())
    offsets = row_offsets(widths)
    n, r = len(widths), int(offsets[-1])
    expected = {"version": FORMAT_VERSION, "key": key, "split": split, "rows": n, "responses": r}
    for name, want in expected.items():
        if head.get(name) != want:
            raise CacheUnusable(f"its header has {name} {head.get(name)!r}, expected {want!r}")
    size = 8 * (n + 1) + 16 * r
    if len(payload) != head.get("payload_bytes") or len(payload) != size:
        what = "truncated" if len(payload) < size else "oversized"
        raise CacheUnusable(f"{what}: {len(payload)} payload bytes, expected {size}")
    if hashlib.blake2b(payload, digest_size=32).hexdigest() != head.get("payload_blake2b"):
        raise CacheUnusable("its payload does not match its checksum (corrupt)")
    stored = torch.from_numpy(np.frombuffer(payload, dtype="<i8", count=n + 1).copy())
    if not torch.equal(stored, offsets):
        raise CacheUnusable("its rows hold other numbers of responses than the data")
    values = np.frombuffer(payload, dtype="<f8", offset=8 * (n + 1)).reshape(2, r).copy()
    dtype = getattr(torch, str(head.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype):
        raise CacheUnusable(f"unknown dtype {head.get('dtype')!r} in its header")
    return RefTable(torch.from_numpy(values), offsets, dtype)


class CachedReference:
    """Reference log-probs looked up by each batch row's id (``Batch.row_ids``: the row's slot in the run) in
    a precomputed table.

    ``state`` (hashes and keys) goes into every checkpoint, so a resumed run can check it trains against the
    same reference values.
    """

    def __init__(self, table: RefTable, state: dict[str, str]) -> None:
        self.table = table
        self.state = dict(state)

    def _lookup(self, batch: Batch) -> Tensor:
        """(2, S) the stored log-probs and token counts of the batch's sequences, in sequence order."""
        ids = batch.row_ids
        n = self.table.num_rows
        if ids is None or ids.numel() != batch.num_rows or bool((ids < 0).any() | (ids >= n).any()):
            raise ValueError(
                f"a precomputed reference needs batches whose row_ids index its {n} rows; got {ids}"
            )
        got = self.table.values[:, self.table.slots(ids.cpu(), batch)]
        # The batch's own response lengths must match the cached ones: a mismatch means the ids point at
        # other rows than the batch holds, which would silently train against wrong reference values.
        counted = torch.bincount(batch.score_sequence.cpu(), minlength=batch.num_sequences)
        if not torch.equal(counted.double(), got[1]):
            raise RuntimeError("cached reference token counts do not match the batch: row ids are misaligned")
        return got.to(batch.input_ids.device, self.table.dtype)

    def response_logps(self, batch: Batch) -> ResponseForward:
        logps, tokens = self._lookup(batch)
        return ResponseForward(logps, tokens)

    def state_for_checkpoint(self) -> dict[str, str]:
        return dict(self.state)
