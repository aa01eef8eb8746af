"""Loading models and tokenizers: dtype names, and load failures as one-line errors naming the config key."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..config import ConfigError, ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _looks_like_a_path(name: str) -> bool:
    """A Hub name is ``name`` or ``org/name``; anything else is meant as a folder."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


@contextlib.contextmanager
def load_errors(key: str, name_or_path: str) -> Iterator[None]:
    """Turn a load failure (missing folder, no network for a Hub name) into a one-line error naming the key.

    A name that is no existing folder says so first: the library's own message would be about Hub repo ids
    (``Repo id must use alphanumeric chars``) for what the user meant as a path.
    """
    try:
        yield
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if Path(name_or_path).expanduser().exists():
            raise ConfigError(f"{key}: cannot load {name_or_path!r}: {first}") from None
        if _looks_like_a_path(name_or_path):
            raise ConfigError(
                f"{key}: no folder {name_or_path!r} exists (and it is not a Hub name either)"
            ) from None
        raise ConfigError(
            f"{key}: no folder {name_or_path!r} exists, and loading it as a Hub name failed: {first}"
        ) from None


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    with load_errors("model.name_or_path", name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        # Padding is masked out everywhere, so any id serves; EOS is the common convention.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, cfg: ModelConfig, key: str = "model.name_or_path") -> PreTrainedModel:
    """A causal LM loaded as ``model.*`` says (dtype, attention backend, remote code), without a KV cache."""
    with load_errors(key, name_or_path):
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path,
            dtype=DTYPES[cfg.dtype],
            attn_implementation=cfg.attn_implementation,
            trust_remote_code=cfg.trust_remote_code,
        )
    model.config.use_cache = False
    return model


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in backward (``model.gradient_checkpointing``)."""
    lm: Any = model
    # The non-reentrant variant works with frozen inputs and DDP; transformers 5 renamed the method.
    kwargs = {"use_reentrant": False}
    if hasattr(lm, "activation_checkpointing_enable"):
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
