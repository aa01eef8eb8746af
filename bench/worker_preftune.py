"""One preftune configuration of the benchmark, in a fresh process: train, time each step, print one JSON line.

Run by bench/vs_trl.py with preftune's venv (``python bench/worker_preftune.py '<spec json>'``); uses the
library API the CLI uses (load_config + runner.build_trainer + trainer.fit) and times each step from the trainer's
documented ``on_step_end`` hook.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import worker_common as wc

ALLOCATOR_ON = wc.same_process_settings()  # before torch is imported: the first allocations count too
wc.quiet_environment()

import torch  # noqa: E402
import transformers  # noqa: E402

from preftune.config import config_keys, load_config  # noqa: E402
from preftune.training import runner  # noqa: E402

VERSIONS = {"torch": torch.__version__, "transformers": transformers.__version__}
_STEP_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")


def overrides_for(spec: dict[str, Any]) -> dict[str, Any]:
    """The run both sides agree on: no shuffling, one micro-batch per step, AdamW with torch's betas, a linear
    schedule without warm-up (TRL's defaults), no eval, no checkpoints, no progress bar."""
    values: dict[str, Any] = {
        "output_dir": spec["output_dir"],
        "seed": spec["seed"],
        "model.name_or_path": spec["model_dir"],
        "data.train": spec["data"],
        "data.shuffle": False,
        "data.max_len": spec["max_len"],
        "loss.type": "sigmoid",
        "loss.beta": spec["beta"],
        "optim.lr": spec["lr"],
        "optim.adam_betas": "0.9,0.999",
        "optim.weight_decay": 0.0,
        "optim.scheduler": "linear",
        "optim.warmup_ratio": 0.0,
        "optim.max_norm": 1.0,
        "train.layout": spec["layout"],
        "train.micro_batch_size": spec["batch"],
        "train.batch_size": spec["batch"],
        "train.max_steps": spec["steps"],
        "train.max_epochs": 1,
        "train.logging_steps": 1,  # the step metrics compared with TRL's; one JSON line per step
        "log.progress": False,
        "ckpt.disable": True,
        "ckpt.resume": "none",
    }
    if spec.get("ref_cache"):
        values["ref.precompute"] = True
    unknown = sorted(set(values) - set(config_keys()))
    if unknown:
        raise SystemExit(f"worker_preftune: this preftune has no config keys {unknown}")
    return values


def main() -> None:
    spec = wc.read_spec()
    wc.set_threads(spec["threads"])
    clock = wc.StepClock()  # from here on: model loading, tokenisation and any precompute count as set-up
    cfg = load_config(None, overrides_for(spec))
    trainer, steps_per_epoch = runner.build_trainer(cfg, log=lambda *_: None)
    step_pairs = trainer.train_dataloader.dataset[: spec["steps"] * spec["batch"]]
    digest = wc.ids_digest([(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in step_pairs])

    # The step's grad norm is a Python float, so its work is finished when the hook runs.
    trainer.on_step_end.append(lambda *_: clock.tick())
    trainer.fit(cfg, consumed_samples=0, num_update_steps_per_epoch=steps_per_epoch)

    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    first_steps = [{k: row[k] for k in _STEP_METRICS} for row in rows[:2]]
    wc.emit(
        {"side": "preftune", "layout": spec["layout"], "ref_cache": bool(spec.get("ref_cache"))},
        allocator_on=ALLOCATOR_ON,
        versions=VERSIONS,
        first_steps=first_steps,
        digest=digest,
        clock=clock,
    )


if __name__ == "__main__":
    main()
