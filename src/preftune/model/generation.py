"""Batched sampling from a causal LM: prompt texts in, responses (text and token ids) out.

Shared by the real-model demo (before/after generations) and ``preftune iterate`` (K samples per prompt).
Prompts are left-padded so every row's new tokens start at the same column, which is what ``generate`` needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class Sample:
    prompt_index: int  # position of the prompt in the list given to sample_responses
    prompt_ids: list[int]  # the rendered prompt's tokens, without padding
    response_ids: list[int]  # generated tokens up to and including the first EOS, without padding
    text: str  # the response decoded without special tokens
    finished: bool  # it ended with one of the model's EOS tokens (False: it hit max_new_tokens)


@dataclass
class SamplingOptions:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 means greedy decoding
    top_p: float = 1.0
    batch_size: int = 16
    seed: int = 0
    chat: bool = True  # render each prompt as one user turn with the tokenizer's chat template


def render_prompt(tokenizer: Any, prompt: str, chat: bool) -> list[int]:
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        # transformers 5 returns a BatchEncoding here, 4.x a plain list.
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return list(tokenizer(prompt)["input_ids"])


def cut_at_eos(row: list[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    """Generated tokens up to the first EOS, kept (it is part of what the model chose), and whether there was
    one. ``generate`` pads only rows that already ended, so everything after the first EOS is padding; a row
    without EOS hit the limit."""
    for position, token in enumerate(row):
        if token in eos_ids:
            return row[: position + 1], True
    return row, False


def _eos_ids(model: nn.Module, tokenizer: Any) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    return set(ids if isinstance(ids, list) else [ids])


def sample_responses(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    num_samples: int = 1,
    options: SamplingOptions | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[Sample]]:
    """``num_samples`` responses for each prompt, grouped per prompt in order.

    Reproducible: batch ``b`` samples under seed ``options.seed + b``. ``on_batch(n)`` is called with the number
    of sequences finished after each batch (for a progress bar).
    """
    opts = options or SamplingOptions()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = _eos_ids(model, tokenizer)
    rendered = [render_prompt(tokenizer, p, opts.chat) for p in prompts]
    jobs = [i for i in range(len(prompts)) for _ in range(num_samples)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[list[Sample]] = [[] for _ in prompts]
    greedy = opts.temperature <= 0
    sampling = {} if greedy else {"temperature": opts.temperature, "top_p": opts.top_p}
    try:
        for b, start in enumerate(range(0, len(jobs), opts.batch_size)):
            batch = jobs[start : start + opts.batch_size]
            width = max(len(rendered[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids = rendered[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention_mask[row, width - len(ids) :] = 1
            torch.manual_seed(opts.seed + b)
            with torch.no_grad():
                out = model.generate(  # type: ignore[operator]
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    do_sample=not greedy,
                    max_new_tokens=opts.max_new_tokens,
                    pad_token_id=pad_id,
                    use_cache=True,
                    **sampling,
                )
            for row, i in enumerate(batch):
                response, finished = cut_at_eos(out[row, width:].tolist(), eos_ids)
                text = tokenizer.decode(response, skip_special_tokens=True).strip()
                results[i].append(Sample(i, rendered[i], response, text, finished))
            if on_batch is not None:
                on_batch(len(batch))
    finally:
        model.train(was_training)
    return results
