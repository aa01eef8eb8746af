"""Tiny offline building blocks: a BPE tokenizer trained on the spot, a random-init causal LM, and a small
learnable preference task. Used by the demo and the tests; nothing here touches the network.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

# A ChatML-style template; it emits BOS itself, which is what makes BOS doubling a real risk to test.
TOY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_toy_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts``, with <pad>, <s> (BOS, prepended) and </s> (EOS).

    Byte-level BPE merges across what a human would call a word boundary ("hello" + "world" can become one
    token), which is exactly the property the boundary-exact tokenisation tests need.
    """
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=TOY_CHAT_TEMPLATE,
    )
    return hf


_ARCHS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama"},
    "qwen2": {"model_type": "qwen2"},
    "mixtral": {"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 2},
}


def build_toy_model(
    vocab_size: int,
    arch: str = "llama",
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    **overrides: Any,
) -> PreTrainedModel:
    """A random-init causal LM small enough to train in seconds on one CPU core (float32)."""
    kwargs: dict[str, Any] = dict(_ARCHS[arch])
    model_type = kwargs.pop("model_type")
    kwargs.update(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    kwargs.update(overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


# ---------------------------------------------------------------- a learnable synthetic preference task

_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our team", "the robot", "a bird", "the chef"]
_VERBS = ["likes", "sees", "finds", "wants", "makes", "reads", "paints", "builds"]
_OBJECTS = ["a red ball", "the old map", "some bread", "a blue kite", "the new song", "a small boat"]
_POLITE = ["thank you kindly", "please enjoy", "with warm regards", "happy to help", "gladly so"]
_RUDE = ["go away now", "whatever dude", "not my problem", "stop asking", "figure it out"]


def synthetic_preference_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Rows of a preference task a tiny model learns in a few dozen steps.

    Both responses restate the prompt's sentence; the chosen one closes politely, the rejected one rudely.
    Example: {"prompt": "Tell me: the cat likes a red ball.", "chosen": " the cat likes a red ball, happy
    to help.", "rejected": " the cat likes a red ball, go away now."}
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        sentence = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        rows.append(
            {
                "prompt": f"Tell me: {sentence}.",
                "chosen": f" {sentence}, {rng.choice(_POLITE)}.",
                "rejected": f" {sentence}, {rng.choice(_RUDE)}.",
            }
        )
    return rows


def toy_corpus() -> list[str]:
    """Text the toy tokenizer is trained on: the synthetic task's own vocabulary, many times over."""
    rows = synthetic_preference_rows(400, seed=1234)
    return [r["prompt"] + r["chosen"] for r in rows] + [r["prompt"] + r["rejected"] for r in rows]


def write_toy_model_dir(
    out_dir: str | Path, arch: str = "llama", hidden_size: int = 64, num_layers: int = 2
) -> Path:
    """Save a toy tokenizer + random-init model as a normal Hugging Face folder (what the CLI loads)."""
    out = Path(out_dir)
    tokenizer = build_toy_tokenizer(toy_corpus())
    model = build_toy_model(len(tokenizer), arch=arch, hidden_size=hidden_size, num_layers=num_layers)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
