"""One preftune configuration of the benchmark, in a fresh process: train, time each step, print one JSON line.

Run by bench/vs_trl.py with preftune's venv (``python bench/worker_preftune.py '<spec json>'``); uses the
library API the CLI uses (load_config + runner.build_trainer + trainer.fit) and times each step from the trainer's
documented ``on_step_end`` hook.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import responses
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
    if spec.get("groups"):  # the --responses workload: one row per prompt, a sigmoid loss over its pairs
        values.update({"loss.pairs": spec["pairs"], "loss.pair_weighting": "uniform"})
    unknown = sorted(set(values) - set(config_keys()))
    if unknown:
        raise SystemExit(f"worker_preftune: this preftune has no config keys {unknown}")
    return values


def _group_steps(trainer: Any, rule: str) -> list[dict[str, float]]:
    """Records the first two training micro-batches of a group run as TRL's pair metrics would read on the
    same comparisons expanded to pairs (means over the pairs); filled in while the trainer runs."""
    steps: list[dict[str, float]] = []
    losses_of = trainer.micro_batch_losses

    def recorded(batch: Any, training: bool) -> Any:
        out = losses_of(batch, training)
        if training and len(steps) < 2:
            steps.append(_pair_view(out, rule))
        return out

    trainer.micro_batch_losses = recorded
    return steps


def _pair_view(out: Any, rule: str) -> dict[str, float]:
    fwd, rewards = out.logps, out.loss.rewards.double()
    chosen, rejected = [], []
    for g in range(fwd.num_rows):
        where = (fwd.row == g).nonzero().flatten().tolist()
        pairs = responses.expand(where, fwd.scores[where].tolist(), rule)
        chosen += [i for i, _ in pairs]
        rejected += [j for _, j in pairs]
    policy = fwd.policy.detach().double()
    return {
        "loss": float(out.per_row.detach().double().mean()),
        "rewards/chosen": float(rewards[chosen].mean()),
        "rewards/rejected": float(rewards[rejected].mean()),
        "logps/chosen": float(policy[chosen].mean()),
        "logps/rejected": float(policy[rejected].mean()),
    }


def _trained_ids(trainer: Any, spec: dict[str, Any]) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) ids of the steps' rows; a group run's as the bench expands them to pairs."""
    rows = trainer.train_dataloader.dataset[: spec["steps"] * spec["batch"]]
    if not spec.get("groups"):
        return [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in rows]
    return [
        (g.prompt_ids, chosen, rejected)
        for g in rows
        for chosen, rejected in responses.expand(g.responses, g.scores, spec["pairs"])
    ]


def main() -> None:
    spec = wc.read_spec()
    wc.set_threads(spec["threads"])
    clock = wc.StepClock()  # from here on: model loading, tokenisation and any precompute count as set-up
    cfg = load_config(None, overrides_for(spec))
    trainer, steps_per_epoch = runner.build_trainer(cfg, log=lambda *_: None)
    digest = wc.ids_digest(_trained_ids(trainer, spec))
    group_steps = _group_steps(trainer, spec["pairs"]) if spec.get("groups") else None

    # The step's grad norm is a Python float, so its work is finished when the hook runs.
    trainer.on_step_end.append(lambda *_: clock.tick())
    trainer.fit(cfg, consumed_samples=0, num_update_steps_per_epoch=steps_per_epoch)

    rows = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    first_steps = (
        group_steps if group_steps is not None else [{k: row[k] for k in _STEP_METRICS} for row in rows[:2]]
    )
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
