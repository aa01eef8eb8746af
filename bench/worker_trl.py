"""One TRL configuration of the benchmark, in a fresh process: train, time each step, print one JSON line.

Run by bench/vs_trl.py with bench/.venv-trl's python. TRL gets what preftune gets: float32, 2 threads,
preftune's glibc allocator settings, the same model folder, jsonl, batch, learning rate, beta and sigmoid
loss, no eval, no checkpoints. Two TRL defaults are overridden because they change the work itself:
``bf16`` (the comparison is float32 on both sides) and ``gradient_checkpointing`` (preftune does not
recompute activations either); the ``fast`` spec adds TRL's fastest options that exist in this version.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from typing import Any

import worker_common as wc

ALLOCATOR_ON = wc.same_process_settings()  # before torch is imported: the first allocations count too
wc.quiet_environment()

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import load_dataset  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

# TRL's options for speed on CPU, by name; the ones this TRL does not have are reported, not passed.
FAST_OPTIONS = {"precompute_ref_log_probs": True, "use_logits_to_keep": True, "padding_free": True}
VERSIONS = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__}
_STEP_METRICS = ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")


class _StepHook(TrainerCallback):
    """Ticks the clock after each optimizer step and keeps the first two steps' metrics before TRL's
    logging averages and clears them."""

    def __init__(self, clock: wc.StepClock) -> None:
        self.clock = clock
        self.trainer: Any = None
        self.first_steps: list[dict[str, float]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.clock.tick()
        if state.global_step == 2 or (state.global_step == 1 and state.max_steps == 1):
            metrics = self.trainer._metrics["train"]
            for i in range(state.global_step):
                self.first_steps.append({k: metrics[k][i] for k in _STEP_METRICS})


def main() -> None:
    spec = wc.read_spec()
    wc.set_threads(spec["threads"])
    fields = {f.name for f in dataclasses.fields(DPOConfig)}
    fast = {k: v for k, v in FAST_OPTIONS.items() if k in fields} if spec["fast"] else {}
    options = {
        "output_dir": spec["output_dir"],
        "seed": spec["seed"],
        "per_device_train_batch_size": spec["batch"],
        "gradient_accumulation_steps": 1,
        "max_steps": spec["steps"],
        "learning_rate": spec["lr"],
        "lr_scheduler_type": "linear",
        "warmup_steps": 0,
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "beta": spec["beta"],
        "loss_type": ["sigmoid"],
        "max_length": spec["max_len"],
        "bf16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "train_sampling_strategy": "sequential",  # the same pairs in each step as preftune (no shuffle)
        "dataloader_num_workers": 0,
        "logging_steps": spec["steps"] + 1,  # no logging inside the timed steps
        "report_to": "none",
        "save_strategy": "no",
        "eval_strategy": "no",
        "disable_tqdm": True,
        "model_init_kwargs": {"dtype": "float32", "attn_implementation": "sdpa"},
        **fast,
    }
    clock = wc.StepClock()  # from here on: model loading, tokenisation and any precompute count as set-up
    with tempfile.TemporaryDirectory() as cache:
        # A fresh datasets cache: TRL keys its reference log-prob cache on the dataset fingerprint, and a hit
        # left by an earlier run would skip the precompute pass this run is meant to time.
        dataset = load_dataset("json", data_files=spec["data"], split="train", cache_dir=cache)
        tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
        hook = _StepHook(clock)
        precompute_s: list[float] = []
        original_precompute = DPOTrainer._precompute_ref_logps

        def timed_precompute(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = original_precompute(self, *args, **kwargs)
            precompute_s.append(time.perf_counter() - start)
            return out

        DPOTrainer._precompute_ref_logps = timed_precompute  # type: ignore[method-assign]
        trainer = DPOTrainer(
            model=spec["model_dir"],
            args=DPOConfig(**options),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[hook],
        )
        hook.trainer = trainer
        rows = trainer.train_dataset.select(range(spec["steps"] * spec["batch"]))
        digest = wc.ids_digest(
            list(zip(rows["prompt_ids"], rows["chosen_ids"], rows["rejected_ids"], strict=True))
        )
        loss_calls: list[float] = []
        compute_loss = trainer.compute_loss

        def recorded_loss(*args: Any, **kwargs: Any) -> Any:
            loss = compute_loss(*args, **kwargs)
            if len(loss_calls) < 2:
                loss_calls.append(float(loss.detach()))
            return loss

        trainer.compute_loss = recorded_loss  # type: ignore[method-assign]
        trainer.train()

    first_steps = [{"loss": loss, **m} for loss, m in zip(loss_calls, hook.first_steps, strict=False)]
    # What TRL actually used: 1.16 accepts padding_free but falls back to padding (it logs a warning).
    effective = {k: getattr(trainer, k, None) for k in ("padding_free", "precompute_ref_logps")}
    wc.emit(
        {
            "side": "trl",
            "fast_options_requested": sorted(fast),
            "fast_options_missing": sorted(set(FAST_OPTIONS) - fields) if spec["fast"] else [],
            "effective": effective,
            "precompute_timed_s": sum(precompute_s),
        },
        allocator_on=ALLOCATOR_ON,
        versions=VERSIONS,
        first_steps=first_steps,
        digest=digest,
        clock=clock,
    )


if __name__ == "__main__":
    main()
