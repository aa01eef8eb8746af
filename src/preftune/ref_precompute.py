"""``ref.precompute``: one pass of the reference over the train and eval pairs before training, cached on disk.

Order of work: hash the reference weights and the tokenised pairs into one key per split; check a resumed
checkpoint trained against the same key; reuse the split's cache file when it is whole, else score every pair
with the reference (each process a disjoint shard, combined by a sum over processes) and write the file on
the main process; then drop the reference model, so training holds only the policy and the tables.
"""

from __future__ import annotations

import gc
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .checkpoint import STATE_FILE
from .config import Config, ConfigError
from .forward import Layout, SequenceScorer
from .ref_cache import (
    CachedReference,
    CacheUnusable,
    RefTable,
    cache_key,
    cache_path,
    pairs_fingerprint,
    read_cache,
    reference_fingerprint,
    write_cache,
)
from .reference import ModelReference, freeze
from .strategy import Strategy

if TYPE_CHECKING:
    from .data import TokenizedPair


def number_pairs(train_pairs: list[TokenizedPair], eval_pairs: list[TokenizedPair]) -> None:
    """Give every pair its slot in the run's table: train pairs 0..N-1, then eval pairs N..N+M-1."""
    for pair_id, pair in enumerate([*train_pairs, *eval_pairs]):
        pair.pair_id = pair_id


def compute_precision(strategy_options: dict[str, Any]) -> str:
    """What the reference computes in beyond its weights' dtype: FSDP2 or DeepSpeed mixed precision."""
    ds = strategy_options.get("ds_config") or {}
    for name in ("bf16", "fp16"):
        if ds.get(name, {}).get("enabled"):
            return f"deepspeed-{name}"
    return f"mixed_precision={strategy_options.get('mixed_precision', 'none')}"


def checkpoint_reference_state(folder: Path | None) -> dict[str, str]:
    """The reference state a checkpoint was trained with ({} when none, or not from a cached reference)."""
    if folder is None or not (folder / STATE_FILE).is_file():
        return {}
    return dict(json.loads((folder / STATE_FILE).read_text()).get("reference") or {})


def _check_resume(saved: dict[str, str], current: dict[str, str], folder: Path | None) -> None:
    if not saved.get("train_key") or saved.get("train_key") == current.get("train_key"):
        return
    changed = [
        what
        for field, what in (
            ("reference", "the reference weights or model config"),
            ("compute", "the reference's compute precision"),
            ("train_data", "the tokenised training data"),
        )
        if saved.get(field) != current.get(field)
    ]
    raise ConfigError(
        f"ckpt.resume: {folder} was trained against reference cache key {saved['train_key'][:16]}, this run "
        f"gives {current['train_key'][:16]}: {' and '.join(changed) or 'the cache format'} changed since; "
        "resume with the same data and reference, or start a new output_dir"
    )


def _score_split(
    pairs: Sequence[TokenizedPair],
    reference: ModelReference,
    layout: Layout,
    strategy: Strategy,
    micro_batch: int,
    progress: bool,
    desc: str,
) -> RefTable:
    """Every pair's reference results; each process scores pairs rank, rank+W, ... and a sum combines them.

    Every process runs the same number of forwards (a short shard repeats a batch and discards it), because
    a sharded reference (FSDP2, ZeRO-3) gathers its weights collectively inside each forward.
    """
    from tqdm.auto import tqdm

    table = RefTable.empty(len(pairs))
    mine = list(range(strategy.rank, len(pairs), strategy.world_size))
    most = math.ceil(len(pairs) / strategy.world_size)
    batches = [mine[i : i + micro_batch] for i in range(0, len(mine), micro_batch)]
    filler = math.ceil(most / micro_batch) - len(batches)
    bar = tqdm(total=len(pairs), desc=desc, disable=not (progress and strategy.is_main()), dynamic_ncols=True)
    for positions in batches + [[]] * filler:
        batch = layout.collate([pairs[i] for i in positions or [0]]).to(strategy.device)
        out = reference.pair_logps(batch)
        if positions:
            table.put(torch.tensor(positions), out)
        bar.update(min(len(positions) * strategy.world_size, len(pairs) - bar.n))
    bar.close()
    values = strategy.all_reduce_tensor(table.values)  # each value is non-zero on exactly one process
    return RefTable(values, table.dtype)


def precomputed_reference(
    cfg: Config,
    policy: nn.Module,
    load_reference: Callable[[], nn.Module | None],
    layout: Layout,
    strategy: Strategy,
    splits: dict[str, list[TokenizedPair]],
    compute: str,
    resume_from: Path | None,
    log: Any,
) -> CachedReference:
    """A :class:`CachedReference` over ``splits`` (numbered by :func:`number_pairs`), from cache or computed.

    With no ``ref.name_or_path`` the reference is the policy's own starting weights, so they are hashed from
    the already loaded policy and a reference model is loaded only when something must be computed.
    """
    cache_dir = Path(cfg.ref.cache_dir or Path(cfg.output_dir) / "ref_cache")
    ref_model = load_reference() if cfg.ref.name_or_path else None
    started = time.perf_counter()
    state = {"reference": reference_fingerprint(ref_model or policy), "compute": compute}
    log(f"reference log-probs: weights hashed in {time.perf_counter() - started:.2f} s")
    for split, pairs in splits.items():
        state[f"{split}_data"] = pairs_fingerprint(pairs)
        state[f"{split}_key"] = cache_key(state["reference"], compute, state[f"{split}_data"])
    _check_resume(checkpoint_reference_state(resume_from), state, resume_from)

    tables: dict[str, RefTable] = {}
    for split, pairs in splits.items():
        key, path = state[f"{split}_key"], cache_path(cache_dir, split, state[f"{split}_key"])
        try:
            tables[split] = read_cache(path, key, split, len(pairs))
        except FileNotFoundError:
            pass
        except CacheUnusable as why:
            log(f"reference log-probs: cache {path} is unusable ({why}); recomputing")
        # All processes reuse, or all compute: a forward of a sharded reference needs every one of them.
        if strategy.all_reduce({"ok": float(split in tables)})["ok"] == strategy.world_size:
            log(f"reference log-probs: reusing cache {path} (key {key[:16]}, {len(pairs)} {split} pairs)")
        else:
            tables.pop(split, None)

    missing = [split for split in splits if split not in tables]
    if missing:
        ref_model = ref_model if ref_model is not None else load_reference()
        plain = SequenceScorer(ref_model if ref_model is not None else policy, cfg.train.lm_head_chunk)
        # No model to load means LoRA: the reference is the policy's own weights before its adapters exist,
        # scored in place (no second copy); only a separate reference model gets frozen.
        scorer = strategy.prepare_model(freeze(plain) if ref_model is not None else plain.eval(), False)
        reference = ModelReference(scorer, layout)
        micro_batch = cfg.train.eval_micro_batch_size or cfg.train.micro_batch_size
        for split in missing:
            started = time.perf_counter()
            key, path = state[f"{split}_key"], cache_path(cache_dir, split, state[f"{split}_key"])
            tables[split] = _score_split(
                splits[split],
                reference,
                layout,
                strategy,
                micro_batch,
                cfg.log.progress,
                f"reference {split}",
            )
            failed = ""
            if strategy.is_main():
                header = {"key": key, "split": split, "reference": state["reference"], "compute": compute,
                          "data": state[f"{split}_data"]}  # fmt: skip
                try:
                    write_cache(path, tables[split], header)
                except OSError as exc:
                    failed = f"ref.cache_dir: cannot write {path}: {exc.strerror or exc}"
            # A reduction rather than a barrier, so every process stops when the main one could not write.
            if strategy.all_reduce({"failed": float(bool(failed))})["failed"]:
                raise ConfigError(failed or f"ref.cache_dir: the main process could not write {path}")
            seconds = time.perf_counter() - started
            log(
                f"reference log-probs: computed {len(splits[split])} {split} pairs in {seconds:.1f} s, saved {path}"
            )
        del scorer, reference
    # The reference is never needed again: free it before the policy's optimizer state is allocated.
    del ref_model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    joined = [tables[split] for split in splits]
    values = torch.cat([t.values for t in joined], dim=1) if joined else RefTable.empty(0).values
    return CachedReference(RefTable(values, joined[0].dtype if joined else torch.float32), state)
