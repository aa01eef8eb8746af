"""One data-preparation run of bench/data_scale.py, in a fresh process: time and peak memory, one JSON line.

    python bench/worker_data.py '<spec json>'

``side`` "preftune" (preftune's venv): ``preftune.data.load_pairs`` on the jsonl, as ``preftune train`` reads
its training data before the first step. ``side`` "trl" (bench/.venv-trl): constructing TRL's DPOTrainer on the
same file, which tokenises it (``datasets.map``, ``dataset_num_proc`` as the spec says). Both report the time,
the peak RSS of the process and the RSS still held once preparation is over (what training would carry).
Under torchrun (``side`` "preftune", WORLD_SIZE > 1) every process loads, as ``preftune train`` does today.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
from typing import Any

import worker_common as wc

ALLOCATOR_ON = wc.same_process_settings()
wc.quiet_environment()


def prepare_preftune(spec: dict[str, Any]) -> dict[str, Any]:
    from preftune.config import load_config
    from preftune.data import load_pairs
    from preftune.model.loading import load_tokenizer

    cfg = load_config(None, {"model.name_or_path": spec["tokenizer"], "data.train": spec["data"],
                             "data.max_len": spec["max_len"], "output_dir": spec["output_dir"]})  # fmt: skip
    tokenizer = load_tokenizer(spec["tokenizer"])
    before = wc.current_rss_mib()
    start = time.perf_counter()
    pairs, report = load_pairs(cfg.data, tokenizer, "train", cfg.seed)
    seconds = time.perf_counter() - start
    gc.collect()
    tokens = sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    return {"prepare_s": seconds, "rows": len(pairs), "tokens": tokens, "truncated": report.truncated,
            "held_mib": wc.current_rss_mib() - before}  # fmt: skip


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
