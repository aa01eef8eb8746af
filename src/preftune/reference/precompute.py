"""``ref.precompute``: one pass of the reference over the train and eval rows (pairs and prompt groups) before
training, cached on disk.

Order of work: hash the reference weights and the tokenised rows into one key per split; check a resumed
checkpoint trained against the same key; reuse the split's cache file when it is whole, else score every
response with a live reference (each process a disjoint shard, combined by a sum over processes) and write the
file on the main process. The caller (:func:`~preftune.reference.build.build_reference`) then frees the live model, so
training holds only the policy and the tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import Row
from ..data.view import StoreRows, response_counts
from ..errors import ConfigError
from ..layouts import Batch, Layout
from ..model.responses import ResponseForward
from ..strategy import Strategy, lockstep
from .cache import (
    CachedReference,
    CacheUnusable,
    RefTable,
    cache_key,
    cache_path,
    read_cache,
    reference_fingerprint,
    rows_fingerprint,
    write_cache,
)
from .sources import ReferenceSource

Rows = Sequence[Row]


def number_rows(train_rows: Rows, eval_rows: Rows) -> None:
    """Give every row its slot in the run's table: train rows 0..N-1, then eval rows N..N+M-1."""
    start = 0
    for rows in (train_rows, eval_rows):
        if isinstance(rows, StoreRows):
            rows.number_from(start)  # its rows are built on demand: each takes its id from its position
        else:
            for row_id, row in enumerate(rows, start):
                row.row_id = row_id
        start += len(rows)


def _described(rows: Rows, split: str) -> str:
    """'49 train rows', for the log."""
    return f"{len(rows)} {split} rows"


@dataclass
class PrecomputeSetup:
    """What the pass scores and how, besides the reference itself."""

    splits: Mapping[str, Rows]  # non-empty splits, numbered by number_rows
    layout: Layout
    compute: str  # StrategyOptions.compute_precision: part of the cache key
    micro_batch: int  # rows per forward (the eval micro batch size)
    resume: tuple[Path, dict[str, str]] | None = None  # a checkpoint to resume, and its saved reference state
    progress: bool = True


def check_resume(saved: dict[str, str], current: dict[str, str], folder: Path | None) -> None:
    """Refuse to resume a checkpoint trained against another reference cache key, saying what changed."""
    if not saved.get("train_key") or saved.get("train_key") == current.get("train_key"):
        return
    changed = [
        what
        for field, what in (
            ("reference", "the reference weights or model config"),
            ("compute", "the reference's compute precision"),
            ("train_data", "the tokenised training data"),
            ("ld_alpha", "loss.ld_alpha (the reference sums it weighs)"),
        )
        if saved.get(field) != current.get(field)
    ]
    raise ConfigError(
        f"ckpt.resume: {folder} was trained against reference cache key {saved['train_key'][:16]}, this run "
        f"gives {current['train_key'][:16]}: {' and '.join(changed) or 'the cache format'} changed since; "
        "resume with the same data and reference, or start a new output_dir"
    )


def _score(
    rows: Rows, reference: ReferenceSource, layout: Layout, device: torch.device
) -> tuple[Batch, ResponseForward]:
    """One forward of the live reference over ``rows``, laid out as they train; results in sequence order."""
    batch = layout.collate(list(rows)).to(device)
    return batch, reference.response_logps(batch)


def score_split(
    rows: Rows,
    reference: ReferenceSource,
    layout: Layout,
    strategy: Strategy,
    micro_batch: int,
    progress: bool,
    desc: str,
) -> RefTable:
    """Every response's reference results; each process scores rows rank, rank+W, ... and a sum combines them
    (every process runs the same number of forwards: :func:`~preftune.strategy.lockstep`)."""
    from tqdm.auto import tqdm

    table = RefTable.empty(response_counts(rows))
    mine = list(range(strategy.rank, len(rows), strategy.world_size))
    batches = [mine[i : i + micro_batch] for i in range(0, len(mine), micro_batch)]
    bar = tqdm(total=len(rows), desc=desc, disable=not (progress and strategy.is_main()), dynamic_ncols=True)
    # A process with no row of its own (fewer rows than processes) still runs its forwards, on row 0.
    for positions, real in lockstep(strategy, batches, filler=[0]):
        batch, out = _score([rows[i] for i in positions], reference, layout, strategy.device)
        if real:
            table.put(table.slots(torch.tensor(positions), batch), out)
            bar.update(min(len(positions) * strategy.world_size, len(rows) - bar.n))
    bar.close()
    values = strategy.all_reduce_tensor(table.values)  # each value is non-zero on exactly one process
    return RefTable(values, table.offsets, table.dtype)


def _cache_state(weights: nn.Module, setup: PrecomputeSetup, log: Callable[[str], Any]) -> dict[str, str]:
    """The hashes and per-split keys the cache files are named by; saved into every checkpoint."""
    started = time.perf_counter()
    state = {"reference": reference_fingerprint(weights), "compute": setup.compute}
    log(f"reference log-probs: weights hashed in {time.perf_counter() - started:.2f} s")
    # The layout's LD-DPO weights are part of every cached sum (the pass collates with that layout).
    ld_alpha = setup.layout.ld_alpha
    if ld_alpha is not None:
        state["ld_alpha"] = repr(ld_alpha)
    for split, rows in setup.splits.items():
        state[f"{split}_data"] = rows_fingerprint(rows)
        state[f"{split}_key"] = cache_key(state["reference"], setup.compute, state[f"{split}_data"], ld_alpha)
    return state


def _reusable_tables(
    state: dict[str, str],
    setup: PrecomputeSetup,
    cache_dir: Path,
    strategy: Strategy,
    log: Callable[[str], Any],
) -> dict[str, RefTable]:
    tables: dict[str, RefTable] = {}
    for split, rows in setup.splits.items():
        key, path = state[f"{split}_key"], cache_path(cache_dir, split, state[f"{split}_key"])
        try:
            tables[split] = read_cache(path, key, split, response_counts(rows))
        except FileNotFoundError:
            pass
        except CacheUnusable as why:
            log(f"reference log-probs: cache {path} is unusable ({why}); recomputing")
        # All processes reuse, or all compute: a forward of a sharded reference needs every one of them.
        if strategy.all_reduce({"ok": float(split in tables)})["ok"] == strategy.world_size:
            log(f"reference log-probs: reusing cache {path} (key {key[:16]}, {_described(rows, split)})")
        else:
            tables.pop(split, None)
    return tables


def _save_table(path: Path, table: RefTable, header: dict[str, str], strategy: Strategy) -> None:
    failed = ""
    if strategy.is_main():
        try:
            write_cache(path, table, header)
        except OSError as exc:
            failed = f"ref.cache_dir: cannot write {path}: {exc.strerror or exc}"
    # A reduction rather than a barrier, so every process stops when the main one could not write.
    if strategy.all_reduce({"failed": float(bool(failed))})["failed"]:
        raise ConfigError(failed or f"ref.cache_dir: the main process could not write {path}")


def precompute_reference(
    weights: nn.Module,
    live: Callable[[], ReferenceSource],
    strategy: Strategy,
    setup: PrecomputeSetup,
    cache_dir: Path,
    log: Callable[[str], Any],
) -> CachedReference:
    """A :class:`CachedReference` over ``setup.splits``, read from ``cache_dir`` or computed.

    ``weights`` is the module whose weights are the reference (hashed for the key); ``live`` makes the live
    reference source that scores what the cache lacks, called only then, so a run that reuses the cache never
    loads a second model.
    """
    state = _cache_state(weights, setup, log)
    if setup.resume is not None:
        check_resume(setup.resume[1], state, setup.resume[0])
    tables = _reusable_tables(state, setup, cache_dir, strategy, log)
    missing = [split for split in setup.splits if split not in tables]
    source = live() if missing else None
    for split in missing:
        assert source is not None
        started = time.perf_counter()
        key, path = state[f"{split}_key"], cache_path(cache_dir, split, state[f"{split}_key"])
        rows = setup.splits[split]
        tables[split] = score_split(
            rows, source, setup.layout, strategy, setup.micro_batch, setup.progress, f"reference {split}"
        )
        header = {"key": key, "split": split, "reference": state["reference"], "compute": setup.compute,
                  "data": state[f"{split}_data"]}  # fmt: skip
        _save_table(path, tables[split], header, strategy)
        log(
            f"reference log-probs: computed {_described(rows, split)} in {time.perf_counter() - started:.1f} s, saved {path}"
        )
    return CachedReference(RefTable.concat([tables[split] for split in setup.splits]), state)
