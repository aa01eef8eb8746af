"""The benchmark's shared inputs: a random-init Llama-style model, a word-level tokenizer and synthetic pairs.

Tokenisation is made identical on both sides by construction: every synthetic word is one token of a
word-level vocabulary split on whitespace, so TRL (which tokenises prompt + response as one text and splits at
the common prefix) and preftune (which tokenises prompt and response apart and joins the ids) produce the same
ids. The workers report a hash of the ids they trained on, and vs_trl.py checks it against :func:`expected_ids`.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3: pad, BOS, EOS, unknown


@dataclass(frozen=True)
class Workload:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    vocab: int
    prompt_tokens: tuple[int, int]  # inclusive range, BOS included
    response_tokens: tuple[int, int]  # inclusive range, EOS included
    pairs: int
    seed: int = 0

    @property
    def max_len(self) -> int:
        return self.prompt_tokens[1] + self.response_tokens[1]


FULL = Workload(512, 8, 1376, 8, 16000, (64, 128), (64, 128), pairs=160)
QUICK = Workload(64, 2, 176, 4, 1000, (8, 16), (8, 16), pairs=24)


def _words(n: int) -> list[str]:
    return [f"w{i}" for i in range(n - len(SPECIALS))]


def _build_tokenizer(w: Workload):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + _words(w.vocab))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # BOS starts every text tokenised with special tokens: preftune's prompt and TRL's prompt(+response) alike.
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def random_text(rng: random.Random, w: Workload, tokens: tuple[int, int]) -> str:
    """Words of the vocabulary, one token each: a length drawn from ``tokens`` less the BOS or EOS that the
    tokenizer / trainer adds."""
    words = _words(w.vocab)
    return " ".join(rng.choice(words) for _ in range(rng.randint(*tokens) - 1))


def _rows(w: Workload) -> list[dict[str, str]]:
    rng = random.Random(w.seed)
    return [
        {
            "prompt": random_text(rng, w, w.prompt_tokens),
            "chosen": " " + random_text(rng, w, w.response_tokens),
            "rejected": " " + random_text(rng, w, w.response_tokens),
        }
        for _ in range(w.pairs)
    ]


def build(root: Path, w: Workload) -> tuple[Path, Path]:
    """``(model folder, train jsonl)`` under ``root``, built once per workload (rebuilt if it changed)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    model_dir, data = root / "model", root / "train.jsonl"
    stamp = root / "workload.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == asdict(w) and data.is_file():
        return model_dir, data
    root.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(
        vocab_size=w.vocab,
        hidden_size=w.hidden,
        intermediate_size=w.intermediate,
        num_hidden_layers=w.layers,
        num_attention_heads=w.heads,
        num_key_value_heads=w.heads,
        max_position_embeddings=max(512, w.max_len),
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(w.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(model_dir)
    _build_tokenizer(w).save_pretrained(model_dir)
    data.write_text("".join(json.dumps(row) + "\n" for row in _rows(w)))
    stamp.write_text(json.dumps(asdict(w)))
    return model_dir, data


def expected_ids(model_dir: Path, data: Path, n: int) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) ids of the first ``n`` rows: BOS + prompt words, response words + EOS."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rows = [json.loads(line) for line in data.read_text().splitlines()[:n]]
    out = []
    for row in rows:
        prompt = tok(row["prompt"])["input_ids"]
        chosen, rejected = (
            tok(row[k], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            for k in ("chosen", "rejected")
        )
        out.append((prompt, chosen, rejected))
    return out


def step_flops(w: Workload, pairs: list[tuple[list[int], list[int], list[int]]]) -> tuple[float, float]:
    """Useful FLOPs of one step over non-pad tokens: (policy forward + backward, reference forward).

    Per sequence of L tokens with R response tokens: the decoder's matmuls cost 2 x N x L forward (N = decoder
    parameters, embeddings and LM head excluded), causal attention 2 x layers x L^2 x hidden forward (QK^T and
    AV over the lower triangle), and the LM head 2 x hidden x vocab x R forward, on response tokens only (the
    only logits DPO needs). Backward costs twice the forward, so the policy costs 3x forward, the reference 1x.
    """
    per_layer = 4 * w.hidden * w.hidden + 3 * w.hidden * w.intermediate
    decoder = w.layers * per_layer
    forward = 0.0
    for prompt, chosen, rejected in pairs:
        for response in (chosen, rejected):
            length = len(prompt) + len(response)
            forward += 2 * decoder * length
            forward += 2 * w.layers * length * length * w.hidden
            forward += 2 * w.hidden * w.vocab * len(response)
    return 3 * forward, forward


def parameter_counts(w: Workload) -> dict[str, int]:
    decoder = w.layers * (4 * w.hidden * w.hidden + 3 * w.hidden * w.intermediate + 2 * w.hidden) + w.hidden
    embeddings = w.vocab * w.hidden
    return {
        "decoder": decoder,
        "embeddings": embeddings,
        "lm_head": embeddings,
        "total": decoder + 2 * embeddings,
    }
