"""What a loss configuration means to the registry: the names it knows, the mixtures and options each variant
takes. Called by :func:`preftune.validate.validate` for a run, and by the trainer for a hand-built LossConfig."""

from __future__ import annotations

from ..config import LossConfig, check, check_loss_fields
from .registry import LOSSES, get_loss, loss_terms


def check_loss_config(loss: LossConfig) -> None:
    """Refuse, naming the field, a loss section the registry cannot train."""
    check_loss_fields(loss)
    terms = loss_terms(loss.type)
    for term in terms:
        check(term in LOSSES, "loss.type", f"unknown loss {term!r}; choose one of {', '.join(LOSSES)}")
    check(len(set(terms)) == len(terms), "loss.type", f"{loss.type!r} names a loss twice")
    check(len(terms) == 1 or not any(LOSSES[t].listwise for t in terms), "loss.type",
          f"{loss.type!r}: a listwise loss scores whole prompt groups and cannot be part of a mixture")  # fmt: skip
    if loss.weights is not None:
        check(len(loss.weights) == len(terms), "loss.weights",
              f"{len(loss.weights)} weights for the {len(terms)} terms of loss.type {loss.type!r}")  # fmt: skip
    if loss.f_divergence != "reverse_kl":
        others = [t for t in terms if not LOSSES[t].f_divergence]
        check(not others, "loss.f_divergence",
              f"{loss.f_divergence} has no form for loss.type {', '.join(others)} (it reads the log-ratios in other "
              "ways than a score difference); use reverse_kl with it")  # fmt: skip
    listwise = get_loss(loss.type).listwise
    check(not (loss.wpo and listwise), "loss.wpo",
          f"WPO weighs each pair's loss; the listwise loss.type {loss.type!r} has no pairs to weigh")  # fmt: skip
    # LD-DPO's shared length l is min(len chosen, len rejected), so it needs pairs: a listwise loss reads all K
    # responses together. (A row of K > 2 responses under LD-DPO is refused when it is collated, naming it.)
    check(not (loss.ld_alpha is not None and listwise), "loss.ld_alpha",
          f"LD-DPO's shared length is that of one pair; the listwise loss.type {loss.type!r} has none")  # fmt: skip


DEFAULT_BETA = 0.01  # OpenRLHF's default, used when neither beta nor loss_config gives one


def trainer_loss_config(beta: float | None, loss_config: LossConfig | None) -> LossConfig:
    """The loss section a :class:`~preftune.DPOTrainer` trains with, checked as the command line's is.
    OpenRLHF's ``beta`` argument and ``loss_config.beta`` name one value: a conflict is refused, not resolved."""
    if loss_config is None:
        loss_config = LossConfig(beta=DEFAULT_BETA if beta is None else beta)
    elif beta is not None and beta != loss_config.beta:
        raise ValueError(
            f"beta={beta} and loss_config.beta={loss_config.beta} disagree; give one of them, or the same value"
        )
    check_loss_config(loss_config)
    return loss_config
