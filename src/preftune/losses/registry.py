"""The loss registry: the input and output types of a variant, :class:`LossSpec` (what a variant needs from the
rest of a run), :data:`LOSSES`, and :func:`compute_loss` for pairs.

A new pairwise variant is one decorated function: ``@register_loss("name")``, plus ``reference_free=True`` when
it never reads ``ref_*`` and ``reports_nll=True`` when its loss holds the chosen NLL (logged as ``nll``). A
listwise variant (one loss per prompt group of K responses) is ``@register_group_loss("name")``. Either name is
then a valid ``loss.type``: the config reads the names and needs from :data:`LOSSES` alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from ..config import LossConfig  # read for its fields only: the config imports this registry


@dataclass(frozen=True)
class PairLogps:
    policy_chosen: Tensor  # (B,) sum over response tokens of log p(token | prefix), policy
    policy_rejected: Tensor  # (B,)
    ref_chosen: Tensor | None  # (B,) same for the frozen reference; None for reference-free losses
    ref_rejected: Tensor | None
    chosen_tokens: Tensor  # (B,) number of response tokens scored (float or int)
    rejected_tokens: Tensor  # (B,)


@dataclass
class LossOutput:
    losses: Tensor  # (B,) per-pair loss, differentiable; the trainer takes the mean
    chosen_rewards: Tensor  # (B,) detached implicit rewards
    rejected_rewards: Tensor  # (B,) detached


@dataclass
class LossState:
    """Mutable cross-step state for stateful losses (only bco_pair's running reward mean today).

    ``state_dict()`` / ``load_state_dict()`` let the trainer checkpoint it. ``update`` is False during
    evaluation so held-out pairs never move the statistics. The state is per process.
    """

    values: dict[str, float] = field(default_factory=dict)
    update: bool = True

    def state_dict(self) -> dict[str, float]:
        return dict(self.values)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.values = {key: float(value) for key, value in state.items()}


LossFn = Callable[[PairLogps, "LossConfig", LossState], LossOutput]


@dataclass(frozen=True)
class LossSpec:
    """A registered variant and what it needs from the rest of a run."""

    name: str
    fn: LossFn
    reference_free: bool  # never reads reference log-probs: no reference is planned or loaded
    reports_nll: bool = False  # its loss contains the chosen NLL, so the NLL is logged even at nll_coef 0


LOSSES: dict[str, LossSpec] = {}


def register_loss(
    name: str, *, reference_free: bool = False, reports_nll: bool = False
) -> Callable[[LossFn], LossFn]:
    """Decorator adding ``fn`` to :data:`LOSSES` under ``name``; a name can be registered once."""

    def register(fn: LossFn) -> LossFn:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered (by {LOSSES[name].fn.__qualname__})")
        LOSSES[name] = LossSpec(name, fn, reference_free, reports_nll)
        return fn

    return register


def get_loss(name: str) -> LossSpec:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}") from None


def compute_loss(logps: PairLogps, cfg: LossConfig, state: LossState | None = None) -> LossOutput:
    """Per-pair loss and detached rewards of the variant named by ``cfg.type``."""
    spec = get_loss(cfg.type)
    if not spec.reference_free and (logps.ref_chosen is None or logps.ref_rejected is None):
        free = ", ".join(name for name, s in LOSSES.items() if s.reference_free)
        raise ValueError(
            f"loss {spec.name!r} needs reference log-probs but ref_chosen/ref_rejected is None; "
            f"give a reference model, or pick a reference-free loss ({free})"
        )
    return spec.fn(logps, cfg, state if state is not None else LossState())
