"""Where a DPO step's time goes, by phase, for each layout: data (collate), policy forward, reference forward,
backward, optimizer. Same model, pairs and threads for every layout; medians over steps after a warm-up.

    .venv/bin/python bench/profile_step.py [--steps 6] [--layouts padded,packed,prefix_shared] [--quick]

The model is issue 4's benchmark shape: a random-init Llama, hidden 512, 8 layers, vocab 16k (about 30M
parameters), float32; 8 pairs with prompts and responses of 64-128 tokens.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from preftune.allocator import keep_freed_memory
from preftune.config import LossConfig
from preftune.data import Row
from preftune.layouts import LAYOUTS
from preftune.losses import LossState, ResponseLogps, compute_loss
from preftune.model.responses import score_responses
from preftune.model.scorer import SequenceScorer
from preftune.reference.sources import freeze


def build_model(quick: bool) -> LlamaForCausalLM:
    hidden, layers, vocab = (128, 2, 2048) if quick else (512, 8, 16384)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=1024, tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def make_pairs(n: int, vocab: int, seed: int, lo: int = 64, hi: int = 128) -> list[Row]:
    rng = random.Random(seed)

    def seq() -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))]

    return [Row.pair(seq(), seq(), seq(), "bench", i) for i in range(n)]


def profile(layout_name: str, steps: int, quick: bool) -> dict[str, float]:
    policy = build_model(quick)
    reference = freeze(build_model(quick))
    layout = LAYOUTS[layout_name](0)
    scorer, ref_scorer = SequenceScorer(policy), SequenceScorer(reference)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-5)
    loss_cfg, state = LossConfig(beta=0.1), LossState()
    phases: dict[str, list[float]] = {k: [] for k in ("data", "policy_fwd", "ref_fwd", "backward", "optim")}
    for step in range(steps + 1):
        pairs = make_pairs(8, policy.config.vocab_size, seed=step)
        marks = [time.perf_counter()]
        batch = layout.collate(pairs)
        marks.append(time.perf_counter())
        fwd = score_responses(scorer, batch)
        marks.append(time.perf_counter())
        with torch.no_grad():
            ref = score_responses(ref_scorer, batch)
        marks.append(time.perf_counter())
        logps = ResponseLogps(fwd.logps, ref.logps, fwd.tokens, batch.sequence_scores, batch.sequence_row,
                              batch.num_rows)  # fmt: skip
        compute_loss(logps, loss_cfg, state).losses.mean().backward()
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if step == 0:
            continue  # warm-up: first-touch allocations and kernel selection
        for name, a, b in zip(phases, marks, marks[1:], strict=False):
            phases[name].append(b - a)
    result = {name: statistics.median(v) for name, v in phases.items()}
    result["positions"] = float(batch.input_ids.numel())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny model, for a smoke test")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    rows = {name: profile(name, args.steps, args.quick) for name in args.layouts.split(",")}
    names = ["data", "policy_fwd", "ref_fwd", "backward", "optim"]
    print(f"{'layout':<14}{'positions':>10}" + "".join(f"{n:>12}" for n in names) + f"{'step s':>10}")
    for layout, r in rows.items():
        total = sum(r[n] for n in names)
        cells = "".join(f"{r[n]:>8.3f} {100 * r[n] / total:>2.0f}%" for n in names)
        print(f"{layout:<14}{int(r['positions']):>10}{cells}{total:>10.3f}")


if __name__ == "__main__":
    main()
