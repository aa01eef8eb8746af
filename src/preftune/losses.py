"""DPO loss variants: one small pure function each, found by name in a registry.

Notation in every docstring: pc, pr = policy summed log-probs of chosen / rejected; rc, rr = reference;
a = pc - rc, b = pr - rr (log-ratios); h = a - b; beta = cfg.beta; eps = cfg.label_smoothing;
lc, lr = chosen / rejected response token counts; s = sigmoid, ls = log sigmoid.
Unless a docstring says otherwise, rewards are beta*a (chosen) and beta*b (rejected).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import LossConfig


@dataclass(frozen=True)
class PairLogps:
    policy_chosen: Tensor  # (B,) sum over response tokens of log p(token | prefix)
    policy_rejected: Tensor
    ref_chosen: Tensor | None  # None for reference-free losses
    ref_rejected: Tensor | None
    chosen_tokens: Tensor  # (B,) response tokens scored
    rejected_tokens: Tensor


@dataclass
class LossOutput:
    losses: Tensor  # (B,) per-pair loss, differentiable; the trainer takes the mean
    chosen_rewards: Tensor  # (B,) detached
    rejected_rewards: Tensor


@dataclass
class LossState:
    """Cross-step state of stateful losses (bco_pair's running reward mean); checkpointed by the trainer.

    ``update`` is False during evaluation so held-out data never moves the statistics.
    """

    values: dict[str, float] = field(default_factory=dict)
    update: bool = True

    def state_dict(self) -> dict[str, float]:
        return dict(self.values)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.values = dict(state)


LossFn = Callable[[PairLogps, LossConfig, LossState], LossOutput]


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: LossFn
    reference_free: bool


LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, *, reference_free: bool = False) -> Callable[[LossFn], LossFn]:
    def wrap(fn: LossFn) -> LossFn:
        LOSSES[name] = LossSpec(name, fn, reference_free)
        return fn

    return wrap


def get_loss(name: str) -> LossSpec:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}")
    return LOSSES[name]


def compute_loss(logps: PairLogps, cfg: LossConfig, state: LossState | None = None) -> LossOutput:
    spec = get_loss(cfg.type)
    if not spec.reference_free and (logps.ref_chosen is None or logps.ref_rejected is None):
        raise ValueError(f"loss {spec.name!r} needs reference log-probs (give a reference model)")
    return spec.fn(logps, cfg, state if state is not None else LossState())


# ---------------------------------------------------------------- shared pieces


def _ratios(x: PairLogps) -> tuple[Tensor, Tensor]:
    assert x.ref_chosen is not None and x.ref_rejected is not None
    return x.policy_chosen.float() - x.ref_chosen.float(), x.policy_rejected.float() - x.ref_rejected.float()


def _ratio_output(losses: Tensor, a: Tensor, b: Tensor, beta: float) -> LossOutput:
    return LossOutput(losses, (beta * a).detach(), (beta * b).detach())


def _smoothed_sigmoid(z: Tensor, eps: float) -> Tensor:
    """-(1-eps) ls(z) - eps ls(-z): the DPO logistic loss with label-flip probability eps (cDPO)."""
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def _averages(x: PairLogps) -> tuple[Tensor, Tensor]:
    return (
        x.policy_chosen.float() / x.chosen_tokens.float(),
        x.policy_rejected.float() / x.rejected_tokens.float(),
    )


# ---------------------------------------------------------------- the variants


@register_loss("sigmoid")
def sigmoid_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """DPO (Rafailov et al. 2023): -(1-eps) ls(beta h) - eps ls(-beta h); eps > 0 is conservative DPO.

    policy == reference gives h = 0 and loss ln 2 = 0.693147.
    """
    a, b = _ratios(x)
    return _ratio_output(_smoothed_sigmoid(cfg.beta * (a - b), cfg.label_smoothing), a, b, cfg.beta)


@register_loss("ipo")
def ipo_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """IPO (Azar et al. 2023): (h - 1/(2 beta))^2 on summed log-probs, as OpenRLHF does.

    With cfg.ipo_average the log-probs are per-token averages (pc/lc etc.), as TRL does. Rewards stay beta*a, beta*b.
    """
    a, b = _ratios(x)
    h = a - b
    if cfg.ipo_average:
        h = a / x.chosen_tokens.float() - b / x.rejected_tokens.float()
    return _ratio_output((h - 1 / (2 * cfg.beta)) ** 2, a, b, cfg.beta)


@register_loss("hinge")
def hinge_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """SLiC-style hinge: relu(1 - beta h)."""
    a, b = _ratios(x)
    return _ratio_output(torch.relu(1 - cfg.beta * (a - b)), a, b, cfg.beta)


@register_loss("robust")
def robust_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024): (-(1-eps) ls(beta h) + eps ls(-beta h)) / (1 - 2 eps).

    An unbiased estimate of the clean-label loss under label-flip rate eps; equals sigmoid when eps = 0.
    """
    a, b = _ratios(x)
    z, eps = cfg.beta * (a - b), cfg.label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return _ratio_output(losses, a, b, cfg.beta)


@register_loss("exo_pair")
def exo_pair_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """EXO (Ji et al. 2024), pairwise: s(z)(ls(z) - ln(1-e)) + s(-z)(ls(-z) - ln e), z = beta h.

    A reverse KL between the model's pair preference s(z) and the target (1-e, e); e = eps, or 1e-3 when eps = 0.
    """
    a, b = _ratios(x)
    z = cfg.beta * (a - b)
    e = cfg.label_smoothing if cfg.label_smoothing > 0 else 1e-3
    losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log(1 - e)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(e)
    )
    return _ratio_output(losses, a, b, cfg.beta)


@register_loss("nca_pair")
def nca_pair_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """NCA (Chen et al. 2024), pairwise: -ls(beta a) - 0.5 ls(-beta a) - 0.5 ls(-beta b)."""
    a, b = _ratios(x)
    za, zb = cfg.beta * a, cfg.beta * b
    losses = -F.logsigmoid(za) - 0.5 * F.logsigmoid(-za) - 0.5 * F.logsigmoid(-zb)
    return _ratio_output(losses, a, b, cfg.beta)


@register_loss("bco_pair")
def bco_pair_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """BCO (Jung et al. 2024), pairwise: -ls(beta a - d) - ls(-(beta b - d)).

    d is the running mean of every reward (beta a and beta b) seen in training so far, this batch included.
    """
    a, b = _ratios(x)
    rewards = torch.cat([cfg.beta * a, cfg.beta * b]).detach()
    count, mean = state.values.get("count", 0.0), state.values.get("mean", 0.0)
    if state.update:
        new_count = count + rewards.numel()
        mean = mean + (float(rewards.sum()) - rewards.numel() * mean) / new_count
        state.values.update(count=new_count, mean=mean)
    losses = -F.logsigmoid(cfg.beta * a - mean) - F.logsigmoid(-(cfg.beta * b - mean))
    return _ratio_output(losses, a, b, cfg.beta)


@register_loss("sppo_hard")
def sppo_hard_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """SPPO with hard labels (Wu et al. 2024): (a - 1/(2 beta))^2 + (b + 1/(2 beta))^2."""
    a, b = _ratios(x)
    half = 1 / (2 * cfg.beta)
    return _ratio_output((a - half) ** 2 + (b + half) ** 2, a, b, cfg.beta)


@register_loss("apo_zero")
def apo_zero_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """APO-zero (D'Oosterlinck et al. 2024), for chosen better than the model: (1 - s(beta a)) + s(beta b)."""
    a, b = _ratios(x)
    losses = (1 - torch.sigmoid(cfg.beta * a)) + torch.sigmoid(cfg.beta * b)
    return _ratio_output(losses, a, b, cfg.beta)


@register_loss("apo_down")
def apo_down_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """APO-down, for chosen worse than the model: s(beta a) + (1 - s(beta (a - b)))."""
    a, b = _ratios(x)
    losses = torch.sigmoid(cfg.beta * a) + (1 - torch.sigmoid(cfg.beta * (a - b)))
    return _ratio_output(losses, a, b, cfg.beta)


@register_loss("discopop")
def discopop_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """DiscoPOP (Chris Lu et al. 2024), log-ratio modulated: z = beta h, m = s(z / tau);
    loss = (1 - m)(-ls(z)) + m exp(-z). At z = 0: 0.5 ln 2 + 0.5."""
    a, b = _ratios(x)
    z = cfg.beta * (a - b)
    m = torch.sigmoid(z / cfg.discopop_tau)
    losses = (1 - m) * -F.logsigmoid(z) + m * torch.exp(-z)
    return _ratio_output(losses, a, b, cfg.beta)


@register_loss("sigmoid_norm")
def sigmoid_norm_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """DPO on length-normalised log-ratios: h_n = a/lc - b/lr; -(1-eps) ls(beta h_n) - eps ls(-beta h_n).

    Rewards are length-normalised too: beta a / lc and beta b / lr.
    """
    a, b = _ratios(x)
    an, bn = a / x.chosen_tokens.float(), b / x.rejected_tokens.float()
    return _ratio_output(_smoothed_sigmoid(cfg.beta * (an - bn), cfg.label_smoothing), an, bn, cfg.beta)


@register_loss("simpo", reference_free=True)
def simpo_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """SimPO (Meng et al. 2024), no reference: z = beta (pc/lc - pr/lr) - gamma;
    loss = -(1-eps) ls(z) - eps ls(-z). Rewards: beta pc/lc and beta pr/lr."""
    ac, ar = _averages(x)
    z = cfg.beta * (ac - ar) - cfg.simpo_gamma
    return LossOutput(
        _smoothed_sigmoid(z, cfg.label_smoothing), (cfg.beta * ac).detach(), (cfg.beta * ar).detach()
    )


def _log1m_exp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate both near 0 and for very negative x."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@register_loss("orpo", reference_free=True)
def orpo_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """ORPO (Hong et al. 2024) = SFT NLL on chosen + odds-ratio term, no reference:
    ac = pc/lc, ar = pr/lr; log_odds = (ac - ar) - (log(1 - e^ac) - log(1 - e^ar));
    loss = -ac - beta ls(log_odds). Rewards: beta ac and beta ar."""
    ac, ar = _averages(x)
    log_odds = (ac - ar) - (_log1m_exp(ac) - _log1m_exp(ar))
    losses = -ac - cfg.beta * F.logsigmoid(log_odds)
    return LossOutput(losses, (cfg.beta * ac).detach(), (cfg.beta * ar).detach())
