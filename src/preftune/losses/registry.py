"""The loss registry: the input and output types of a variant, :class:`LossSpec` (what a variant needs from the
rest of a run), :data:`LOSSES`, and :func:`compute_pair_loss`, a pairwise variant on explicit pairs.

Training reads one input, :class:`ResponseLogps` (every response of a micro-batch's rows), and gets one output,
:class:`RowLossOutput` (a loss per row): :func:`preftune.losses.rows.compute_loss`. A pairwise variant runs
there on the pairs each row expands into (a pair row is one pair), through :func:`compute_pair_loss`.

A new pairwise variant is one decorated function: ``@register_loss("name")``, plus ``reference_free=True`` when
it never reads ``ref_*`` and ``reports_nll=True`` when its loss holds the chosen NLL (logged as ``nll``). A
listwise variant (one loss per row of K responses) is ``@register_group_loss("name")``. Either name is then a
valid ``loss.type``: the config reads the names and needs from :data:`LOSSES` alone.

``loss.wpo`` is an option of every pairwise variant, not a variant: :func:`pair_loss` multiplies each pair's
loss by its :func:`wpo_weights`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..config import LossConfig


@dataclass(frozen=True)
class PairLogps:
    policy_chosen: Tensor  # (B,) sum over response tokens of log p(token | prefix), policy
    policy_rejected: Tensor  # (B,)
    ref_chosen: Tensor | None  # (B,) same for the frozen reference; None for reference-free losses
    ref_rejected: Tensor | None
    chosen_tokens: Tensor  # (B,) number of response tokens scored (float or int)
    rejected_tokens: Tensor  # (B,)
    # WPO (loss.wpo) only: each response's mean over tokens of log p(token) - log sum_v p(v)^2, policy, no grad.
    chosen_aligned: Tensor | None = None  # (B,)
    rejected_aligned: Tensor | None = None  # (B,)


@dataclass
class LossOutput:
    losses: Tensor  # (B,) per-pair loss, differentiable; the trainer takes the mean
    chosen_rewards: Tensor  # (B,) detached implicit rewards
    rejected_rewards: Tensor  # (B,) detached
    # A mixture's terms: name -> (B,) detached, unweighted per-pair loss of that term (logged as loss/<name>).
    terms: dict[str, Tensor] = field(default_factory=dict)
    weights: Tensor | None = (
        None  # (B,) detached WPO weight each loss was multiplied by; None without loss.wpo
    )
    # (chosen, rejected), each (B,): how far each reward may be from its exact value by rounding alone
    # (:func:`reward_rounding`); the metrics call two rewards closer than their roundings' sum a tie.
    rounding: tuple[Tensor, Tensor] | None = None


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


@dataclass(frozen=True)
class ResponseLogps:
    """Every response of a micro-batch of R rows (S responses in all), in the batch's sequence order.

    Two prompts, the first with 3 responses, the second with 2 (S = 5, R = 2), numbered as a batch numbers
    them (the first response of each row, then the second, ...)::

        policy = [-10., -7., -12., -9., -11.]    ref = [...] (5,) or None
        tokens = [4, 3, 6, 3, 5]                 scores = [3., 0.5, 1., 0., 2.]   (higher is better; ties allowed)
        row    = [0, 1, 0, 1, 0]                 num_rows = 2
    """

    policy: Tensor  # (S,) sum over response tokens of log p(token | prompt, earlier tokens), policy
    ref: Tensor | None  # (S,) the same under the frozen reference; None for reference-free losses
    tokens: Tensor  # (S,) number of response tokens scored (float or int)
    scores: Tensor  # (S,) the responses' scores, higher is better
    row: Tensor  # (S,) long, the row index 0..R-1 of each response
    num_rows: int  # R
    aligned: Tensor | None = None  # (S,) WPO (loss.wpo) only: as PairLogps.chosen_aligned, per response


@dataclass
class RowLossOutput:
    losses: Tensor  # (R,) per-row loss, differentiable; the trainer takes the mean
    rewards: Tensor  # (S,) detached implicit reward of each response (as the variant defines it)
    rounding: Tensor | None = None  # (S,) each reward's :func:`reward_rounding`, as LossOutput.rounding
    # A mixture's terms: name -> (R,) detached, unweighted loss of that term per row (logged as loss/<name>).
    terms: dict[str, Tensor] = field(default_factory=dict)
    weights: Tensor | None = None  # (R,) detached mean WPO weight of each row's pairs; None without loss.wpo


LossFn = Callable[[PairLogps, "LossConfig", LossState], LossOutput]
GroupLossFn = Callable[[ResponseLogps, "LossConfig"], RowLossOutput]


@dataclass(frozen=True)
class LossSpec:
    """A registered variant and what it needs from the rest of a run."""

    name: str
    fn: LossFn | GroupLossFn  # a LossFn, or a GroupLossFn when listwise
    reference_free: bool  # never reads reference log-probs: no reference is planned or loaded
    reports_nll: bool = False  # its loss contains the chosen NLL, so the NLL is logged even at nll_coef 0
    # Scores all responses of a row at once (fn is a GroupLossFn); a pairwise variant trains on the pairs
    # loss.pairs expands a row into (see losses.rows).
    listwise: bool = False
    # Its loss reads the responses' scores (pairwise.f_scores), so loss.f_divergence can replace the log-ratios
    # by f'(ratio); the variants that read log-ratios in other ways have no f-divergence form (TRL's set).
    f_divergence: bool = False


LOSSES: dict[str, LossSpec] = {}


def register_loss(
    name: str, *, reference_free: bool = False, reports_nll: bool = False, f_divergence: bool = False
) -> Callable[[LossFn], LossFn]:
    """Decorator adding ``fn`` to :data:`LOSSES` under ``name``; a name can be registered once."""

    def register(fn: LossFn) -> LossFn:
        _check_new(name)
        LOSSES[name] = LossSpec(name, fn, reference_free, reports_nll, f_divergence=f_divergence)
        return fn

    return register


def register_group_loss(name: str) -> Callable[[GroupLossFn], GroupLossFn]:
    """Decorator adding a listwise ``fn`` (all responses of a row per loss term) to :data:`LOSSES`."""

    def register(fn: GroupLossFn) -> GroupLossFn:
        _check_new(name)
        LOSSES[name] = LossSpec(name, fn, reference_free=False, listwise=True)
        return fn

    return register


def _check_new(name: str) -> None:
    if name in LOSSES:
        raise ValueError(f"loss {name!r} is already registered (by {LOSSES[name].fn.__qualname__})")


def loss_terms(name: str) -> list[str]:
    """The registered names a ``loss.type`` is made of: "sigmoid" -> ["sigmoid"]; "sigmoid,sft" -> both."""
    return [term.strip() for term in name.split(",")]


def get_loss(name: str) -> LossSpec:
    """The spec of a registered name, or of a mixture of them ("sigmoid,bco_pair,sft"): see :func:`mixture_loss`."""
    terms = loss_terms(name)
    unknown = [term for term in terms if term not in LOSSES]
    if unknown:
        raise ValueError(f"unknown loss {unknown[0]!r}; known losses: {', '.join(LOSSES)}")
    if len(terms) == 1:
        return LOSSES[terms[0]]
    specs = [LOSSES[term] for term in terms]
    if any(spec.listwise for spec in specs):
        raise ValueError(f"loss {name!r}: a listwise loss scores whole prompt groups and cannot be mixed")
    return LossSpec(
        name,
        mixture_loss,
        reference_free=all(spec.reference_free for spec in specs),
        reports_nll=any(spec.reports_nll for spec in specs),
        f_divergence=all(spec.f_divergence for spec in specs),
    )


def mixture_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """A weighted sum of registered pairwise losses (MPO, Tulu-style mixtures; TRL's list ``loss_type``):

        loss = sum_k w_k loss_k      over the names of cfg.type, w = cfg.weights (all 1 when unset)

    The mean over pairs of the sum is TRL's sum of the weighted means. Rewards are those of the first
    reference-based term (its own, unweighted), else the first term's: TRL reports beta times the log-ratios
    whatever the loss, which is what every reference-based term here reports too. Each term's unweighted
    per-pair loss is kept in ``terms`` and logged as ``loss/<name>``.
    """
    names = loss_terms(cfg.type)
    weights = cfg.weights if cfg.weights is not None else [1.0] * len(names)
    outs = {name: cast(LossFn, LOSSES[name].fn)(x, cfg, state) for name in names}
    total = weights[0] * outs[names[0]].losses
    for name, weight in zip(names[1:], weights[1:], strict=True):
        total = total + weight * outs[name].losses
    shown = next((outs[n] for n in names if not LOSSES[n].reference_free), outs[names[0]])
    terms = {name: out.losses.detach() for name, out in outs.items()}
    return LossOutput(total, shown.chosen_rewards, shown.rejected_rewards, terms)


def wpo_weights(x: PairLogps, clamp: bool) -> Tensor:
    """WPO's pair weight (Zhou et al. 2024, eq. 2), from the policy and without gradient:

        w = exp(a_c + a_r),   a = (1/|y|) sum_t [log p(y_t) - log sum_v p(v)^2]   (``x.chosen_aligned`` ...)

    and min(1, w) with ``clamp``. TRL 1.x (1.16 included) computes exp(a_c) exp(a_r) unclamped, which is
    ``clamp=False``; the WPO authors' code and TRL 0.x cap it at 1, ``clamp=True``. log sum_v p(v)^2 <= log p_max,
    so a >= 0 whenever every token is the model's top one; w > 1 is possible and the cap matters.
    Example: a_c = ln 1.2, a_r = ln 0.5 -> w = 0.6 either way; a_c = a_r = ln 1.2 -> 1.44, or 1 with clamp.
    """
    if x.chosen_aligned is None or x.rejected_aligned is None:
        raise ValueError(
            "loss.wpo needs each response's aligned log-probs (chosen_aligned / rejected_aligned): "
            "score the policy with want_aligned=True"
        )
    wide = torch.promote_types(x.chosen_aligned.dtype, torch.float32)
    w = torch.exp(x.chosen_aligned.detach().to(wide) + x.rejected_aligned.detach().to(wide))
    return w.clamp(max=1.0) if clamp else w


def pair_loss(fn: LossFn, logps: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """The pairwise variant ``fn`` on ``logps``, each pair's loss times its WPO weight when ``loss.wpo`` is on
    (the rewards are the variant's own, unweighted). The one place the weight applies, pairs or groups."""
    out = fn(logps, cfg, state)
    if not cfg.wpo:
        return out
    weights = wpo_weights(logps, cfg.wpo_clamp)
    losses = out.losses * weights.to(out.losses.dtype)
    weighted = weights.to(out.losses.dtype)
    return LossOutput(losses, out.chosen_rewards, out.rejected_rewards, out.terms, weights=weighted)


# Relative rounding of a summed float32 log-prob that two exact computations of it (other layouts, kernels,
# batch compositions, a cached reference) may differ by: 8 float32 ulps. Measured differences are below 1 ulp
# (~4e-6 on sums near -70); a trained margin is orders of magnitude above the band this gives.
TIE_RTOL = 2.0**-20


def reward_rounding(policy: Tensor, ref: Tensor | None, beta: float) -> Tensor:
    """How far a reward may be off by rounding alone: TIE_RTOL x beta x (|policy| + |ref|), detached, float64.

    Every variant's reward is beta times one response's log-ratio (or its policy log-prob), possibly divided by
    a length >= 1, so this bounds it for all. With policy == reference every reward is 0 up to this band, and
    which side of 0 the rounding falls on depends on the BLAS (an AVX2 and an AVX-512 machine differ): the
    metrics read rewards closer than the band as tied, so a tie is reported the same on every machine.
    """
    magnitude = policy.detach().double().abs()
    if ref is not None:
        magnitude = magnitude + ref.detach().double().abs()
    return TIE_RTOL * abs(beta) * magnitude


def compute_pair_loss(logps: PairLogps, cfg: LossConfig, state: LossState | None = None) -> LossOutput:
    """Per-pair loss and detached rewards of the pairwise variant named by ``cfg.type`` on explicit pairs."""
    spec = get_loss(cfg.type)
    if spec.listwise:
        raise ValueError(f"loss {spec.name!r} is listwise: it scores whole rows; use compute_loss")
    if not spec.reference_free and (logps.ref_chosen is None or logps.ref_rejected is None):
        free = ", ".join(name for name, s in LOSSES.items() if s.reference_free)
        raise ValueError(
            f"loss {spec.name!r} needs reference log-probs but ref_chosen/ref_rejected is None; "
            f"give a reference model, or pick a reference-free loss ({free})"
        )
    fn = cast(LossFn, spec.fn)  # not listwise, so a pairwise LossFn
    out = pair_loss(fn, logps, cfg, state if state is not None else LossState())
    out.rounding = (
        reward_rounding(logps.policy_chosen, logps.ref_chosen, cfg.beta),
        reward_rounding(logps.policy_rejected, logps.ref_rejected, cfg.beta),
    )
    return out
