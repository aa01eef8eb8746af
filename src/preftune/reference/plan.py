"""Which reference a run has, decided once from the config: a frozen :class:`ReferencePlan`.

Every consumer reads the plan instead of re-deriving it: config validation (through :func:`plan_reference`),
the builder and ``preftune iterate`` (which reference folder a round names), and
:func:`~preftune.reference.build.build_reference`, which turns a plan into a reference source.

    loss.type reference-free          -> none
    lora.rank > 0                     -> adapters_off   (the policy itself with its adapters disabled)
    ref.name_or_path set              -> model          (that folder, loaded as a frozen copy)
    otherwise                         -> policy_start   (the policy's own starting weights, loaded again)

``ref.precompute`` scores any of the last three once before training and caches the results; ``ref.offload``
keeps a loaded copy whole on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import ConfigError
from ..losses import get_loss
from ..run_folder import RunFolder

if TYPE_CHECKING:
    from ..config import Config

ReferenceKind = Literal["none", "model", "policy_start", "adapters_off"]


@dataclass(frozen=True)
class ReferencePlan:
    kind: ReferenceKind
    path: str | None = None  # the folder a model / policy_start reference loads from
    precompute: bool = False  # scored once before training, cached on disk, the model freed
    cache_dir: Path | None = None  # where the precomputed tables live (with precompute)
    offload: bool = False  # a loaded copy stays whole on CPU

    @property
    def path_key(self) -> str:
        """The config key that names ``path``, for load errors."""
        return "ref.name_or_path" if self.kind == "model" else "model.name_or_path"

    @property
    def loads_model(self) -> bool:
        """A separate frozen copy is loaded from ``path`` (when the reference is scored live)."""
        return self.kind in ("model", "policy_start")


def _refuse(bad: bool, key: str, message: str) -> None:
    if bad:
        raise ConfigError(f"{key}: {message}")


def _refuse_sync(cfg: Config) -> None:
    """TR-DPO's sync (``ref.sync_steps``) needs a live reference that every process mixes exactly."""
    ref = cfg.ref
    _refuse(ref.sync_steps < 0, "ref.sync_steps", f"must be >= 0 (0 = off), got {ref.sync_steps}")
    _refuse(not 0 < ref.sync_alpha <= 1, "ref.sync_alpha", f"must be in (0, 1], got {ref.sync_alpha}")
    if ref.sync_steps == 0:
        return
    sync = f"with ref.sync_steps {ref.sync_steps}"
    _refuse(ref.precompute, "ref.precompute",
            f"{sync} the reference moves during training, so precomputed log-probs would go stale")  # fmt: skip
    _refuse(get_loss(cfg.loss.type).reference_free, "ref.sync_steps",
            f"loss.type {cfg.loss.type!r} is reference-free; there is no reference to sync")  # fmt: skip
    # LoRA itself runs on single or ddp only (its own check names strategy.name); the deltas assume it.
    _refuse(cfg.lora.rank > 0 and cfg.strategy.name not in ("single", "ddp"), "ref.sync_steps",
            f"with lora.rank > 0 the reference's deltas are kept on single or ddp, not {cfg.strategy.name}")  # fmt: skip


def plan_reference(cfg: Config) -> ReferencePlan:
    """The run's reference; refuses a combination that cannot have one, naming the key."""
    ref, lora = cfg.ref, cfg.lora
    _refuse_sync(cfg)
    _refuse(
        lora.rank > 0 and ref.offload,
        "ref.offload",
        "with lora.rank > 0 there is no reference copy to offload",
    )
    if get_loss(cfg.loss.type).reference_free:
        free = f"loss {cfg.loss.type!r} is reference-free"
        _refuse(ref.name_or_path is not None, "ref.name_or_path", f"{free}; remove the reference model")
        _refuse(ref.precompute, "ref.precompute", f"{free}; there are no reference log-probs to precompute")
        return ReferencePlan("none")
    cache_dir = Path(ref.cache_dir or RunFolder(Path(cfg.output_dir)).ref_cache) if ref.precompute else None
    if lora.rank > 0:
        _refuse(ref.name_or_path is not None, "ref.name_or_path",
                "with lora.rank > 0 the reference is the policy with adapters disabled; remove it")  # fmt: skip
        return ReferencePlan("adapters_off", precompute=ref.precompute, cache_dir=cache_dir)
    kind: ReferenceKind = "model" if ref.name_or_path else "policy_start"
    path = ref.name_or_path or cfg.model.name_or_path
    return ReferencePlan(kind, path, ref.precompute, cache_dir, ref.offload)
