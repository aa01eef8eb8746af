"""One data-preparation run of bench/data_scale.py, in a fresh process: time and peak memory, one JSON line.

    python bench/worker_data.py '<spec json>'

``side`` "preftune" (preftune's venv): ``preftune train``'s data step on the jsonl (its tokenised store under
``cache_dir``: built, or reused when a run before built it), then the first batch's rows. ``side`` "trl" (bench/.venv-trl): constructing TRL's DPOTrainer on the
same file, which tokenises it (``datasets.map``, ``dataset_num_proc`` as the spec says). Both report the time,
the peak RSS of the process and the RSS still held once preparation is over (what training would carry).
Under torchrun (``side`` "preftune", WORLD_SIZE > 1) the first process builds the store and the other waits,
then both map it, as ``preftune train`` does. ``held_mib`` is anonymous memory (RssAnon) added by the data
step; the store's mapped pages (RssFile) are page cache, shared by every process and run that maps them.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import worker_common as wc

ALLOCATOR_ON = wc.same_process_settings()
wc.quiet_environment()


def prepare_preftune(spec: dict[str, Any]) -> dict[str, Any]:
    """``preftune train``'s own data step (``load_splits``: open the store of the key, or build it, the first
    process of the node building while the others wait), then what the first optimizer step reads: the
    sampler's first global batch of rows."""
    from preftune.config import load_config
    from preftune.data.sampler import ResumableSampler
    from preftune.model.loading import load_tokenizer
    from preftune.strategy import build_strategy
    from preftune.training.loaders import load_splits

    cfg = load_config(None, {"model.name_or_path": spec["tokenizer"], "data.train": spec["data"],
                             "data.max_len": spec["max_len"], "output_dir": spec["output_dir"],
                             "data.cache_dir": spec["cache_dir"]})  # fmt: skip
    world = int(os.environ.get("WORLD_SIZE", "1"))
    strategy = build_strategy("ddp" if world > 1 else "single")
    tokenizer = load_tokenizer(spec["tokenizer"])
    before = {field: wc.status_mib(field) for field in ("RssAnon", "RssFile")}
    start = time.perf_counter()
    pairs, _ = load_splits(cfg, tokenizer, Path(spec["output_dir"]), True, lambda *_: None, strategy)
    prepared = time.perf_counter()
    sampler = ResumableSampler(len(pairs), cfg.train.batch_size, cfg.seed, True, strategy.rank, world)
    first = [pairs[i] for i, _ in zip(sampler, range(cfg.train.batch_size // world), strict=False)]
    first_batch = time.perf_counter()
    gc.collect()
    held = {field: wc.status_mib(field) - before[field] for field in before}
    store = pairs.store  # type: ignore[attr-defined]
    return {"prepare_s": prepared - start, "first_batch_s": first_batch - start, "rows": len(pairs),
            "tokens": int(store.lengths().sum()),
            "first_batch_rows": len(first), "reused": store.reused, "held_mib": held["RssAnon"],
            "held_file_mib": held["RssFile"], "build_workers_peak_rss_mib": wc.children_peak_rss_mib(),
            "store_mib": sum(f.stat().st_size for f in store.folder.iterdir()) / 2**20}  # fmt: skip


def prepare_trl(spec: dict[str, Any]) -> dict[str, Any]:
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    with tempfile.TemporaryDirectory() as cache:  # a fresh datasets cache: nothing reused from an earlier run
        before = wc.current_rss_mib()
        start = time.perf_counter()
        dataset = load_dataset("json", data_files=spec["data"], split="train", cache_dir=cache)
        args = DPOConfig(output_dir=spec["output_dir"], max_length=spec["max_len"], report_to="none",
                         use_cpu=True, dataset_num_proc=spec.get("num_proc"), bf16=False)  # fmt: skip
        trainer = DPOTrainer(
            model=spec["model"], args=args, train_dataset=dataset, processing_class=tokenizer
        )
        seconds = time.perf_counter() - start
        rows = len(trainer.train_dataset)
        gc.collect()
        held = wc.current_rss_mib() - before
    return {"prepare_s": seconds, "rows": rows, "held_mib": held}


def main() -> None:
    spec = wc.read_spec()
    wc.set_threads(spec.get("threads", wc.THREADS))
    out = prepare_trl(spec) if spec["side"] == "trl" else prepare_preftune(spec)
    out.update(side=spec["side"], rank=int(os.environ.get("RANK", "0")), allocator_settings=ALLOCATOR_ON,
               peak_rss_mib=wc.peak_rss_mib())  # fmt: skip
    import json

    sys.stdout.write(wc.RESULT_PREFIX + json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
