"""``load_pairs`` / ``load_groups``: configured sources in, tokenised pairs or prompt groups and a report out.

Both read one split through its tokenised store (store.py): found under the cache folder by its key and
reused, or built (build.py: count, draw, convert and tokenise in chunks, truncate) and then reused. Both run
one pipeline on groups (a pair is the group ``[chosen, rejected]`` with scores [1, 0]); they differ only in
which row shapes they accept. A row that fails a per-row check is counted under its reason in the report; a
problem with the files or the configuration raises :class:`DataError`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from ..config import DataConfig
from .build import ChunkConverter, SplitSources, build_split, default_num_proc
from .errors import DataError
from .items import TokenizedGroup, TokenizedPair
from .report import DataReport, report_from_dict
from .store import GroupStore, is_complete, store_key
from .view import StoreRows

Split = Literal["train", "eval"]


def load_pairs(
    cfg: DataConfig,
    tokenizer: Any,
    split: Split,
    seed: int,
    cache_dir: Path | None = None,
    build: bool = True,
) -> tuple[StoreRows[TokenizedPair], DataReport]:
    """Tokenised pairs for ``split`` and the report of what was read, kept and dropped.

    "train" uses data.train / train_probs / train_split / max_samples; "eval" uses data.eval / eval_split /
    eval_max_samples and never mixes by probability. Only pair rows: a row with K responses is read as a
    pair row (and so refused or dropped); :func:`load_groups` reads those. The store lives under
    ``cache_dir`` (else data.cache_dir, else a temporary folder that lives as long as the rows); ``build``
    False only opens a store another process built, and raises when there is none.
    """
    store, report = open_split(cfg, tokenizer, split, seed, False, cache_dir, build)
    return StoreRows(store, pairs=True), report


def load_groups(
    cfg: DataConfig,
    tokenizer: Any,
    split: Split,
    seed: int,
    cache_dir: Path | None = None,
    build: bool = True,
) -> tuple[StoreRows[TokenizedGroup], DataReport]:
    """Tokenised prompt groups for ``split`` from any mix of group rows and pair rows, and the report.

    Same sources, mixing, limits and store as :func:`load_pairs`. A pair row gives the group ``[chosen,
    rejected]`` with scores [1.0, 0.0] and the same ids load_pairs gives it; a group row keeps its response
    order, less merged duplicates and what data.max_responses leaves out. ``report.merged_responses``
    counts the merges.
    """
    store, report = open_split(cfg, tokenizer, split, seed, True, cache_dir, build)
    return StoreRows(store, pairs=False), report


def split_sources(cfg: DataConfig, split: Split) -> SplitSources:
    """The split's sources and their settings, checked."""
    if split == "train":
        sources = SplitSources(split, cfg.train, cfg.train_probs, cfg.train_split, cfg.max_samples)
    else:
        sources = SplitSources(split, cfg.eval, None, cfg.eval_split, cfg.eval_max_samples)
    names = sources.names
    if not names:
        raise DataError(f"data.{split}: no {split} source given.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(
            f"data.{split}: {', '.join(repeated)} listed more than once; list each source once "
            "(use data.train_probs to weight it)."
        )
    if sources.probs is not None and len(sources.probs) != len(names):
        raise DataError(f"data.train_probs: has {len(sources.probs)} values for {len(names)} sources.")
    return sources


def open_split(
    cfg: DataConfig,
    tokenizer: Any,
    split: Split,
    seed: int,
    groups: bool,
    cache_dir: Path | None,
    build: bool,
) -> tuple[GroupStore, DataReport]:
    """The split's store, reused when one of its key is complete under the cache folder, else built; and the
    report of its build. ``store.reused`` says which, ``store.build_seconds`` how long a build took."""
    sources = split_sources(cfg, split)
    key = store_key(cfg, split, sources.names, tokenizer, seed, "groups" if groups else "pairs")
    temporary = None
    if cache_dir is None and cfg.cache_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="preftune-data-")
    root = Path(temporary.name if temporary else cache_dir or str(cfg.cache_dir))
    folder, reused, seconds = root / key[:32], True, 0.0
    if not is_complete(folder, key):
        if not build:
            raise DataError(
                f"data.{split}: no complete tokenised store {folder} (key {key[:16]}); the process that builds "
                "it did not finish"
            )
        start = time.perf_counter()
        converter = ChunkConverter(cfg, tokenizer, groups)
        build_split(root, key, sources, converter, seed, cfg.num_proc or default_num_proc())
        reused, seconds = False, time.perf_counter() - start
    store = GroupStore(folder)
    store.reused, store.build_seconds, store.temporary = reused, seconds, temporary
    report = report_from_dict(store.meta["report"], cfg.report_examples)
    return store, report
