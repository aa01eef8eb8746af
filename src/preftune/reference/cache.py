"""The reference log-prob cache: content hashes that key it, its file format, and the reference that reads it.

A cache file holds, for one split of tokenised pairs, each pair's summed chosen / rejected reference log-probs
and response token counts, in the pairs' order. Its key is a hash of (reference weights, model config,
compute precision, tokenised pairs), so a later run over the same data with the same reference reuses it
and any change to either makes a new key: a stale cache is never read, only left unused.

File (``<cache_dir>/<split>-<key[:32]>.refcache``)::

    PREFTUNE-REFCACHE\\n
    {"version": 1, "key": ..., "split": "train", "pairs": N, "payload_bytes": 32N, "payload_blake2b": ..., ...}\\n
    payload: float64 little-endian, 4 rows of N: chosen_logps, rejected_logps, chosen_tokens, rejected_tokens
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

from ..layouts import Batch, PairForward
from ..layouts.batch import ResponseForward
from ..model.lora import base_state_dict, is_peft_model

if TYPE_CHECKING:
    from ..data import TokenizedPair

FORMAT_VERSION = 1
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


def pairs_fingerprint(pairs: Sequence[TokenizedPair]) -> str:
    """Hash of the tokenised pairs in order: prompt, chosen and rejected ids, each with its length."""
    h = _hasher()
    h.update(f"{len(pairs)} pairs".encode())
    for pair in pairs:
        for ids in (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids):
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


@dataclass
class RefTable:
    """Per-pair reference results, float64 (4, N): chosen_logps, rejected_logps, chosen_tokens, rejected_tokens.

    float64 holds the float32 values the model produced exactly; ``dtype`` is what they are handed back as.
    """

    values: Tensor
    dtype: torch.dtype = torch.float32

    @classmethod
    def empty(cls, num_pairs: int) -> RefTable:
        return cls(torch.zeros(4, num_pairs, dtype=torch.float64))

    @property
    def num_pairs(self) -> int:
        return int(self.values.shape[1])

    def put(self, positions: Tensor, out: PairForward) -> None:
        got = torch.stack([out.chosen_logps, out.rejected_logps, out.chosen_tokens, out.rejected_tokens])
        self.values[:, positions] = got.detach().to("cpu", torch.float64)
        self.dtype = out.chosen_logps.dtype


class CacheUnusable(Exception):
    """A cache file that exists but cannot be trusted (truncated, corrupt, another key); it gets recomputed."""


def write_cache(path: Path, table: RefTable, header: dict[str, Any]) -> None:
    """Write atomically: a temporary file in the same folder, fsynced, then renamed over ``path``."""
    payload = table.values.contiguous().numpy().astype("<f8", copy=False).tobytes()
    head = {
        **header,
        "version": FORMAT_VERSION,
        "pairs": table.num_pairs,
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


def read_cache(path: Path, key: str, split: str, num_pairs: int) -> RefTable:
    """The table stored at ``path``; raises :class:`CacheUnusable` saying why it cannot be used."""
    head, payload = _split_file(path.read_bytes())
    expected = {"version": FORMAT_VERSION, "key": key, "split": split, "pairs": num_pairs}
    for name, want in expected.items():
        if head.get(name) != want:
            raise CacheUnusable(f"its header has {name} {head.get(name)!r}, expected {want!r}")
    if len(payload) != head.get("payload_bytes") or len(payload) != 32 * num_pairs:
        what = "truncated" if len(payload) < 32 * num_pairs else "oversized"
        raise CacheUnusable(f"{what}: {len(payload)} payload bytes, expected {32 * num_pairs}")
    if hashlib.blake2b(payload, digest_size=32).hexdigest() != head.get("payload_blake2b"):
        raise CacheUnusable("its payload does not match its checksum (corrupt)")
    values = torch.from_numpy(np.frombuffer(payload, dtype="<f8").reshape(4, num_pairs).copy())
    dtype = getattr(torch, str(head.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype):
        raise CacheUnusable(f"unknown dtype {head.get('dtype')!r} in its header")
    return RefTable(values, dtype)


class CachedReference:
    """Reference log-probs looked up by each pair's id (``Batch.pair_ids``) in a precomputed table.

    ``state`` (hashes and keys) goes into every checkpoint, so a resumed run can check it trains against the
    same reference values.
    """

    def __init__(self, table: RefTable, state: dict[str, str]) -> None:
        self.table = table
        self.state = dict(state)

    def pair_logps(self, batch: Batch) -> PairForward:
        ids = batch.pair_ids
        n = self.table.num_pairs
        if ids is None or ids.numel() != batch.num_pairs or bool((ids < 0).any() | (ids >= n).any()):
            raise ValueError(
                f"a precomputed reference needs batches whose pair_ids index its {n} pairs; got {ids}"
            )
        got = self.table.values[:, ids.cpu()]
        # The batch's own response lengths must match the cached ones: a mismatch means the ids point at
        # other pairs than the batch holds, which would silently train against wrong reference values.
        counted = torch.bincount(batch.score_sequence.cpu(), minlength=2 * batch.num_pairs)
        if not torch.equal(counted.double(), torch.cat([got[2], got[3]])):
            raise RuntimeError(
                "cached reference token counts do not match the batch: pair ids are misaligned"
            )
        device = batch.input_ids.device
        chosen, rejected, chosen_tokens, rejected_tokens = got.to(device, self.table.dtype)
        return PairForward(chosen, rejected, chosen_tokens, rejected_tokens)

    def response_logps(self, batch: Batch) -> ResponseForward:
        raise ValueError(
            "the reference cache holds pairs; prompt groups need a live reference (no ref.precompute)"
        )

    def state_for_checkpoint(self) -> dict[str, str]:
        return dict(self.state)
