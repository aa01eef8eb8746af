"""``load_rows``: configured sources in, tokenised rows (a prompt with K >= 2 scored responses; a pair is the
row ``[chosen, rejected]`` with scores [1, 0]) and a report out.

It reads one split through its tokenised store (store.py): found under the cache folder by its key and reused,
or built (build.py: count, draw, convert and tokenise in chunks, truncate) and then reused. A row that fails a
per-row check is counted under its reason in the report; a problem with the files or the configuration raises
:class:`DataError`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from ..config import DataConfig
from .build import ChunkConverter, SplitSources, build_split, default_num_proc
from .errors import DataError
from .report import DataReport, report_from_dict
from .store import RowStore, is_complete, store_key
from .view import StoreRows

Split = Literal["train", "eval"]


def load_rows(
    cfg: DataConfig,
    tokenizer: Any,
    split: Split,
    seed: int,
    cache_dir: Path | None = None,
    build: bool = True,
) -> tuple[StoreRows, DataReport]:
    """Tokenised rows for ``split`` from any mix of pair rows and rows of K scored responses, and the report of
    what was read, kept and dropped.

    "train" uses data.train / train_probs / train_split / max_samples; "eval" uses data.eval / eval_split /
    eval_max_samples and never mixes by probability. A pair row gives the row ``[chosen, rejected]`` with
    scores [1.0, 0.0]; a row of K responses keeps its response order, less merged duplicates
    (``report.merged_responses`` counts them) and what data.max_responses leaves out. The store lives under
    ``cache_dir`` (else data.cache_dir, else a temporary folder that lives as long as the rows); ``build``
    False only opens a store another process built, and raises when there is none.
    """
    store, report = open_split(cfg, tokenizer, split, seed, cache_dir, build)
    return StoreRows(store), report


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
    cache_dir: Path | None,
    build: bool,
) -> tuple[RowStore, DataReport]:
    """The split's store, reused when one of its key is complete under the cache folder, else built; and the
    report of its build. ``store.reused`` says which, ``store.build_seconds`` how long a build took."""
    sources = split_sources(cfg, split)
    key = store_key(cfg, split, sources.names, tokenizer, seed)
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
        converter = ChunkConverter(cfg, tokenizer)
        build_split(root, key, sources, converter, seed, cfg.num_proc or default_num_proc())
        reused, seconds = False, time.perf_counter() - start
    store = RowStore(folder)
    store.reused, store.build_seconds, store.temporary = reused, seconds, temporary
    report = report_from_dict(store.meta["report"], cfg.report_examples)
    return store, report
