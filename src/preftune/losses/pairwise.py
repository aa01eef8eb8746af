"""Pairwise DPO loss variants: one small pure function each, registered by name, looked up by ``cfg.type``.

Notation used by every docstring below:

    pc, pr   policy log-probs of the chosen / rejected response, summed over response tokens
    rc, rr   the same under the frozen reference model
    a = pc - rc,  b = pr - rr      (log-ratios)
    h = a - b                       (under loss.f_divergence: f'(e^a) - f'(e^b), see f_scores)
    beta = cfg.beta,  eps = cfg.label_smoothing
    lc, lr   chosen / rejected response token counts (clamped to >= 1, as TRL does)
    s(x) = sigmoid(x),  ls(x) = log(sigmoid(x)) = -log(1 + exp(-x))

Unless a docstring says otherwise, the implicit rewards are beta*a (chosen) and beta*b (rejected), and a
response's reward depends on that response alone (never on its partner): the row losses
(:mod:`.rows`) read each response's reward that way.
All arithmetic runs in at least float32; outputs come back in the dtype of ``policy_chosen``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import LossOutput, LossState, PairLogps, register_loss

if TYPE_CHECKING:
    from ..config import LossConfig


# ---------------------------------------------------------------- shared pieces


def wide(t: Tensor) -> Tensor:
    # float64 stays float64 so callers who want more precision keep it; bf16/fp16/int go to float32.
    return t.to(torch.promote_types(t.dtype, torch.float32))


def log_ratios(x: PairLogps) -> tuple[Tensor, Tensor]:
    """(a, b) = (pc - rc, pr - rr)."""
    if x.ref_chosen is None or x.ref_rejected is None:
        raise ValueError("this loss needs reference log-probs (ref_chosen / ref_rejected)")
    return wide(x.policy_chosen) - wide(x.ref_chosen), wide(x.policy_rejected) - wide(x.ref_rejected)


def lengths(x: PairLogps) -> tuple[Tensor, Tensor]:
    # An empty response (possible after truncation) must not divide by zero; TRL clamps the same way.
    return wide(x.chosen_tokens).clamp(min=1), wide(x.rejected_tokens).clamp(min=1)


def policy_averages(x: PairLogps) -> tuple[Tensor, Tensor]:
    """(pc/lc, pr/lr): per-token average policy log-probs."""
    lc, lr = lengths(x)
    return wide(x.policy_chosen) / lc, wide(x.policy_rejected) / lr


def loss_output(x: PairLogps, losses: Tensor, chosen_rewards: Tensor, rejected_rewards: Tensor) -> LossOutput:
    dtype = x.policy_chosen.dtype
    return LossOutput(
        losses.to(dtype), chosen_rewards.detach().to(dtype), rejected_rewards.detach().to(dtype)
    )


def f_scores(a: Tensor, b: Tensor, cfg: LossConfig) -> tuple[Tensor, Tensor]:
    """The responses' scores f'(e^u) of f-DPO (Wang et al. 2023) for log-ratios u = a, b (``loss.f_divergence``):

        reverse_kl  u                              (plain DPO: the scores are the log-ratios)
        forward_kl  1 - e^-u
        js          log 2 + ls(u)                  = log(2t / (1 + t)), t = e^u
        alpha       (e^((al-1) u) - 1) / (al-1)    al = cfg.f_alpha; al = 1 is reverse_kl

    Each is f'(t) - f'(1), zero when policy == reference, as TRL 1.16 writes them; alpha clamps (al-1) u at 80
    as TRL does, and uses expm1, which keeps digits that e^x - 1 loses near u = 0.
    """
    kind = cfg.f_divergence
    if kind == "reverse_kl" or (kind == "alpha" and abs(cfg.f_alpha - 1.0) < 1e-6):
        return a, b
    if kind == "forward_kl":
        return -torch.expm1(-a), -torch.expm1(-b)
    if kind == "js":
        return math.log(2) + F.logsigmoid(a), math.log(2) + F.logsigmoid(b)
    if kind == "alpha":
        c = cfg.f_alpha - 1.0
        return torch.expm1((c * a).clamp(max=80.0)) / c, torch.expm1((c * b).clamp(max=80.0)) / c
    raise ValueError(f"loss.f_divergence: unknown {kind!r}; choose reverse_kl, forward_kl, js or alpha")


def _score_gap(x: PairLogps, cfg: LossConfig) -> tuple[Tensor, Tensor, Tensor]:
    """(h, a, b): the score difference h = f'(a) - f'(b) the loss acts on (a - b under reverse_kl) and the
    log-ratios a, b the rewards are made of."""
    a, b = log_ratios(x)
    sc, sr = f_scores(a, b, cfg)
    return sc - sr, a, b


def smoothed_logistic(z: Tensor, eps: float) -> Tensor:
    """-(1-eps) ls(z) - eps ls(-z): logistic loss when the label is flipped with probability eps."""
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


# ---------------------------------------------------------------- reference-based variants


@register_loss("sigmoid", f_divergence=True)
def sigmoid_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """DPO (Rafailov et al. 2023):  loss = -(1-eps) ls(beta h) - eps ls(-beta h).

    eps > 0 is conservative DPO (cDPO, Mitchell 2023), as in OpenRLHF and earlier TRL releases;
    current TRL's "sigmoid" has no eps term, which is the eps = 0 case here.
    """
    h, a, b = _score_gap(x, cfg)
    return loss_output(x, smoothed_logistic(cfg.beta * h, cfg.label_smoothing), cfg.beta * a, cfg.beta * b)


@register_loss("ipo", f_divergence=True)
def ipo_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """IPO (Azar et al. 2023, eq. 17):  loss = (h - 1/(2 beta))^2  with h from summed log-probs (OpenRLHF).

    cfg.ipo_average = True uses per-token averages instead, h = a/lc - b/lr (TRL's choice, which the IPO
    authors confirmed to TRL). Rewards stay beta*a, beta*b on summed log-probs either way.
    """
    a, b = log_ratios(x)
    sc, sr = f_scores(a, b, cfg)
    if cfg.ipo_average:
        lc, lr = lengths(x)
        h = sc / lc - sr / lr
    else:
        h = sc - sr
    return loss_output(x, (h - 1 / (2 * cfg.beta)) ** 2, cfg.beta * a, cfg.beta * b)


@register_loss("hinge", f_divergence=True)
def hinge_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """SLiC-style hinge (Zhao et al. 2023):  loss = relu(1 - beta h)."""
    h, a, b = _score_gap(x, cfg)
    return loss_output(x, torch.relu(1 - cfg.beta * h), cfg.beta * a, cfg.beta * b)


@register_loss("robust", f_divergence=True)
def robust_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024):  loss = (-(1-eps) ls(beta h) + eps ls(-beta h)) / (1 - 2 eps).

    An unbiased estimate of the clean-label DPO loss when labels flip with probability eps; eps = 0 is
    plain DPO.
    """
    h, a, b = _score_gap(x, cfg)
    z, eps = cfg.beta * h, cfg.label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)
    return loss_output(x, losses, cfg.beta * a, cfg.beta * b)


@register_loss("exo_pair", f_divergence=True)
def exo_pair_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """EXO, pairwise (Ji et al. 2024, eq. 16), with z = beta h and e = eps, or 1e-3 when eps = 0:

        loss = s(z) (ls(z) - log(1-e)) + s(-z) (ls(-z) - log(e))

    the KL divergence from the target preference (1-e, e) to the model's (s(z), s(-z)); it is >= 0 and
    reaches 0 at z = log((1-e)/e). The 1e-3 default is earlier TRL's (current TRL takes eps as given).
    """
    h, a, b = _score_gap(x, cfg)
    z = cfg.beta * h
    e = cfg.label_smoothing if cfg.label_smoothing > 0 else 1e-3
    losses = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-e)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(e)
    )
    return loss_output(x, losses, cfg.beta * a, cfg.beta * b)


@register_loss("nca_pair")
def nca_pair_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """NCA, pairwise (Chen et al. 2024):  loss = -ls(beta a) - 0.5 ls(-beta a) - 0.5 ls(-beta b)."""
    a, b = log_ratios(x)
    za, zb = cfg.beta * a, cfg.beta * b
    losses = -F.logsigmoid(za) - 0.5 * F.logsigmoid(-za) - 0.5 * F.logsigmoid(-zb)
    return loss_output(x, losses, za, zb)


@register_loss("bco_pair")
def bco_pair_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """BCO, pairwise (Jung et al. 2024):  loss = -ls(beta a - d) - ls(-(beta b - d)).

    d is the running mean of every reward (beta a and beta b) seen so far, this batch included: with
    state.update the batch's rewards are folded in first, then d is read. Each reward counts once, so
    d is the exact mean over all rewards; TRL releases that had d averaged the per-batch means, which
    is the same whenever batches have equal size. (Current TRL dropped d altogether.)
    """
    a, b = log_ratios(x)
    za, zb = cfg.beta * a, cfg.beta * b
    count, mean = state.values.get("count", 0.0), state.values.get("mean", 0.0)
    if state.update:
        rewards = torch.cat([za, zb]).detach()
        count += rewards.numel()
        mean += (float(rewards.sum()) - rewards.numel() * mean) / count
        state.values.update(count=count, mean=mean)
    losses = -F.logsigmoid(za - mean) - F.logsigmoid(-(zb - mean))
    return loss_output(x, losses, za, zb)


@register_loss("sppo_hard")
def sppo_hard_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """SPPO with hard win probabilities (Wu et al. 2024):  loss = (a - 1/(2 beta))^2 + (b + 1/(2 beta))^2."""
    a, b = log_ratios(x)
    half = 1 / (2 * cfg.beta)
    return loss_output(x, (a - half) ** 2 + (b + half) ** 2, cfg.beta * a, cfg.beta * b)


@register_loss("apo_zero")
def apo_zero_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """APO-zero (D'Oosterlinck et al. 2024, eq. 7):  loss = (1 - s(beta a)) + s(beta b).

    For chosen responses better than the model's own: raises chosen, lowers rejected likelihood.
    """
    a, b = log_ratios(x)
    losses = (1 - torch.sigmoid(cfg.beta * a)) + torch.sigmoid(cfg.beta * b)
    return loss_output(x, losses, cfg.beta * a, cfg.beta * b)


@register_loss("apo_down")
def apo_down_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """APO-down (D'Oosterlinck et al. 2024, eq. 8):  loss = s(beta a) + (1 - s(beta h)).

    For chosen responses worse than the model's own: lowers both likelihoods, rejected more.
    """
    a, b = log_ratios(x)
    losses = torch.sigmoid(cfg.beta * a) + (1 - torch.sigmoid(cfg.beta * (a - b)))
    return loss_output(x, losses, cfg.beta * a, cfg.beta * b)


@register_loss("discopop", f_divergence=True)
def discopop_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """DiscoPOP / log-ratio modulated loss (Chris Lu et al. 2024, eq. 5), with z = beta h, tau = cfg.discopop_tau:

        m = s(z / tau);  loss = (1 - m) (-ls(z)) + m exp(-z)

    m exp(-z) is evaluated as exp(ls(z / tau) - z): the same number, but a very negative z gives
    exp(-z) = inf times m = 0, which is NaN in the literal form.
    """
    h, a, b = _score_gap(x, cfg)
    z = cfg.beta * h
    tau = cfg.discopop_tau
    losses = torch.sigmoid(-z / tau) * -F.logsigmoid(z) + torch.exp(F.logsigmoid(z / tau) - z)
    return loss_output(x, losses, cfg.beta * a, cfg.beta * b)


@register_loss("sigmoid_norm", f_divergence=True)
def sigmoid_norm_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """Length-normalised DPO (Tulu 3, eq. 6; TRL "sigmoid_norm"), with h_n = a/lc - b/lr:

        loss = -(1-eps) ls(beta h_n) - eps ls(-beta h_n)

    h_n = (pc/lc - rc/lc) - (pr/lr - rr/lr). TRL has no eps term (eps = 0 here is TRL exactly); eps is
    kept so label_smoothing means the same as for "sigmoid". Rewards are length-normalised too:
    beta a/lc and beta b/lr, so their margin is the quantity the loss acts on (TRL logs beta a, beta b).
    """
    a, b = log_ratios(x)
    sc, sr = f_scores(a, b, cfg)
    lc, lr = lengths(x)
    losses = smoothed_logistic(cfg.beta * (sc / lc - sr / lr), cfg.label_smoothing)
    return loss_output(x, losses, cfg.beta * a / lc, cfg.beta * b / lr)


# ---------------------------------------------------------------- reference-free variants


@register_loss("simpo", reference_free=True)
def simpo_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """SimPO (Meng et al. 2024), no reference; h = pc/lc - pr/lr, g = cfg.simpo_gamma / beta:

        loss = -(1-eps) ls(beta (h - g)) - eps ls(-beta (h - g))

    i.e. the margin beta h must beat gamma. Rewards: beta pc/lc and beta pr/lr.
    """
    ac, ar = policy_averages(x)
    z = cfg.beta * ((ac - ar) - cfg.simpo_gamma / cfg.beta)
    return loss_output(x, smoothed_logistic(z, cfg.label_smoothing), cfg.beta * ac, cfg.beta * ar)


def _log1m_exp(v: Tensor) -> Tensor:
    """log(1 - exp(v)) for v <= 0, accurate near 0 (expm1) and for very negative v (log1p)."""
    # v is an average log-prob, so v <= 0; v == 0 (a certain response) would give log(0) = -inf,
    # so v is held just below 0 and the odds ratio stays finite.
    v = v.clamp(max=-1e-7)
    return torch.where(v > -math.log(2), torch.log(-torch.expm1(v)), torch.log1p(-torch.exp(v)))


@register_loss("orpo", reference_free=True, reports_nll=True)
def orpo_loss(x: PairLogps, cfg: LossConfig, state: LossState) -> LossOutput:
    """ORPO (Hong et al. 2024), no reference: SFT NLL on the chosen response plus an odds-ratio term.

        ac = pc/lc, ar = pr/lr   (per-token average log-probs)
        log_odds = (ac - ar) - (log(1 - exp(ac)) - log(1 - exp(ar)))   = log(odds(chosen) / odds(rejected))
        loss = -ac - beta ls(log_odds)

    beta is ORPO's lambda. -ac is a per-pair token-average NLL; TRL instead averages the NLL over all
    chosen tokens of the batch, which weighs long responses more. Rewards: beta ac and beta ar.
    """
    ac, ar = policy_averages(x)
    log_odds = (ac - ar) - (_log1m_exp(ac) - _log1m_exp(ar))
    losses = -ac - cfg.beta * F.logsigmoid(log_odds)
    return loss_output(x, losses, cfg.beta * ac, cfg.beta * ar)
