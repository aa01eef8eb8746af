"""Sentiment of generated text with VADER (a lexicon and rules, offline, no model): compound score in [-1, 1]."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ..config import ConfigError


@lru_cache(maxsize=1)
def _analyzer() -> Any:
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise ConfigError(
            "the demo scores sentiment with vaderSentiment, which is not installed: pip install 'preftune[demo]'"
        ) from None
    return SentimentIntensityAnalyzer()


def vader_scores(texts: list[str]) -> list[float]:
    """VADER's compound score per text: > 0.05 is usually read as positive, < -0.05 as negative."""
    analyzer = _analyzer()
    return [float(analyzer.polarity_scores(text)["compound"]) for text in texts]


def vader_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """A ``preftune iterate`` reward (``iterate.reward preftune.showcase.sentiment:vader_reward``): how positive
    the response reads; the prompt does not matter."""
    return vader_scores(responses)
