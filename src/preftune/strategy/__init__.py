"""Execution strategies behind one Protocol; ``build_strategy`` picks one from ``strategy.name``."""

from __future__ import annotations

from .base import Strategy
from .single import SingleProcessStrategy

STRATEGIES = {"single": SingleProcessStrategy}


def build_strategy(name: str, accumulation_steps: int = 1) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"strategy.name: unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name](accumulation_steps=accumulation_steps)


__all__ = ["STRATEGIES", "SingleProcessStrategy", "Strategy", "build_strategy"]
