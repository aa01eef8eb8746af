"""LoRA through peft: wrapping the policy, and exporting it merged or as an adapter folder.

With LoRA the base weights stay frozen, so the reference is the policy itself with its adapters switched off
(:class:`~preftune.reference.sources.AdapterDisabledReference`): no second copy of the model.
peft is an optional dependency, imported only here and only when ``lora.rank > 0``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, cast

from torch import Tensor, nn

from ..config import Config, ConfigError, LoraConfig, check

ADAPTER = "default"  # peft's name for the one adapter get_peft_model creates


def check_lora_setup(cfg: Config) -> None:
    """LoRA's needs from the rest of the run: a strategy that trains it, and peft installed."""
    if cfg.lora.rank == 0:
        return
    check(cfg.strategy.name in ("single", "ddp"), "strategy.name",
          f"LoRA runs with single or ddp, not {cfg.strategy.name} yet")  # fmt: skip
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigError("lora.rank: LoRA needs peft: pip install 'preftune[lora]'") from None


def is_peft_model(model: nn.Module) -> bool:
    # No PeftModel can exist before peft is imported; checking first spares full fine-tuning runs its import.
    if sys.modules.get("peft") is None:
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def wrap_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """``model`` with LoRA adapters on ``cfg.target_modules``; only the adapters require gradients.

    The B matrices start at zero, so the wrapped policy's outputs equal the base model's at step 0.
    """
    import peft

    targets: str | list[str] = "all-linear" if cfg.target_modules == ["all-linear"] else cfg.target_modules
    peft_cfg = peft.LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # annotated int; peft computes alpha / r in floats
        lora_dropout=cfg.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():
            # peft probes the transformers-4 name of a property that transformers 5 renamed; harmless noise.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            wrapped = peft.get_peft_model(model, peft_cfg)
    except ValueError as exc:  # e.g. a target name that matches no module
        first = (str(exc).strip().splitlines() or ["invalid target"])[0]
        raise ConfigError(f"lora.target_modules: {first}") from None
    # The scorer reads the LM head's (and tied embedding's) weight directly for its chunked log-softmax,
    # which would silently skip an adapter placed there; refuse instead.
    lm: Any = wrapped
    for kind, module in (("output", lm.get_output_embeddings()), ("input", lm.get_input_embeddings())):
        if hasattr(module, "base_layer"):
            raise ConfigError(
                f"lora.target_modules: adapting the {kind} embedding is not supported; "
                "name linear projections (or use all-linear)"
            )
    return wrapped


def base_state_dict(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """A PeftModel's state dict reduced to its base model's: adapters dropped, the base model's own key names."""
    return {
        key.removeprefix("base_model.model.").replace(".base_layer.", "."): value
        for key, value in weights.items()
        if ".lora_" not in key
    }


def save_peft(model: Any, weights: dict[str, Tensor], folder: Path, mode: str) -> None:
    """Write ``model`` (a PeftModel) to ``folder`` from its full state dict ``weights`` (peft's key names).

    ``adapter``: peft's adapter folder (adapter_config.json + adapter_model.safetensors), for
    ``PeftModel.from_pretrained(base, folder)``. ``merged``: a plain Hugging Face model whose linear weights
    are W + scale * B @ A, computed into new tensors so the live model (still training when a checkpoint
    exports) is never modified.
    """
    if mode == "adapter":
        model.save_pretrained(folder, state_dict=weights, safe_serialization=True)
        return
    merged = base_state_dict(weights)
    from peft.tuners.lora import LoraLayer

    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer) and ADAPTER in layer.lora_A:
            key = name.removeprefix("base_model.model.") + ".weight"
            # peft's own merge math (scaling, fan_in_fan_out); every concrete LoRA layer defines it.
            delta = cast(Any, layer).get_delta_weight(ADAPTER)
            merged[key] = merged[key] + delta.to(merged[key].device, merged[key].dtype)
    model.get_base_model().save_pretrained(folder, state_dict=merged, safe_serialization=True)
