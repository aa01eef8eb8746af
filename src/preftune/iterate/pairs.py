"""From K scored responses per prompt to training rows, with every drop counted: at most one (best, worst)
preference pair (``iterate.pairing best_worst``), or the prompt's whole scored group (``listwise``).

Rules, per prompt (``min_gap`` = ``iterate.min_score_gap``):

1. Only non-empty responses compete (an empty one is no answer; the data loader would drop it anyway).
   Fewer than two left: dropped as ``empty_response``.
2. All of them the same text: dropped as ``identical_responses`` (a pair of equal texts teaches nothing).
3. chosen = the highest score (first one on ties); rejected = the lowest score among responses whose text
   differs from chosen's (first one on ties).
4. gap = chosen - rejected. gap == 0: dropped as ``tied_scores`` (no preference at all, whatever ``min_gap``);
   gap < min_gap: dropped as ``gap_below_min``. Otherwise the pair is kept.

Example, min_gap 0.5: responses ["a", "b", "", "c"] scored [0.2, 0.9, 5.0, 0.3] -> chosen "b" (0.9),
rejected "a" (0.2), gap 0.7, kept; the empty response never wins despite its 5.0.

``listwise`` keeps every non-empty response with its score (ties stay ties; a repeated text is merged by the
data loader, keeping its highest score) and drops a prompt for the same reasons, judged on the same best and
worst: ``{"prompt": ..., "responses": ["a", "b", "c"], "scores": [0.2, 0.9, 0.3]}`` in the example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DROP_REASONS = {
    "empty_response": "fewer than two non-empty responses",
    "identical_responses": "all non-empty responses are the same text",
    "tied_scores": "best and worst score are equal",
    "gap_below_min": "best - worst score below iterate.min_score_gap",
}


@dataclass
class PromptSamples:
    """One prompt's K responses and their scores, as written to ``round-<r>/samples.jsonl``."""

    index: int  # row of the prompt in iterate.prompts
    prompt: str
    responses: list[str]
    scores: list[float]
    finished: list[bool]  # False: the response hit iterate.max_new_tokens before EOS

    def to_row(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "prompt": self.prompt,
            "responses": self.responses,
            "scores": self.scores,
            "finished": self.finished,
        }


@dataclass
class Pair:
    prompt_index: int
    prompt: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float

    def to_row(self) -> dict[str, Any]:
        """A row in the training format (prompt, chosen, rejected), plus where it came from and its scores."""
        return {
            "prompt": self.prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "chosen_score": self.chosen_score,
            "rejected_score": self.rejected_score,
            "prompt_index": self.prompt_index,
        }


def best_worst(sample: PromptSamples, min_gap: float) -> Pair | str:
    """The prompt's pair, or the reason (a key of :data:`DROP_REASONS`) it has none."""
    candidates = [i for i, text in enumerate(sample.responses) if text.strip()]
    if len(candidates) < 2:
        return "empty_response"
    if len({sample.responses[i] for i in candidates}) < 2:
        return "identical_responses"
    # max/min return the first of equal keys, which makes ties resolve to the earliest sample.
    best = max(candidates, key=lambda i: sample.scores[i])
    others = [i for i in candidates if sample.responses[i] != sample.responses[best]]
    worst = min(others, key=lambda i: sample.scores[i])
    gap = sample.scores[best] - sample.scores[worst]
    if gap <= 0:
        return "tied_scores"
    if gap < min_gap:
        return "gap_below_min"
    return Pair(
        sample.index,
        sample.prompt,
        sample.responses[best],
        sample.responses[worst],
        sample.scores[best],
        sample.scores[worst],
    )


def listwise(sample: PromptSamples, min_gap: float) -> dict[str, Any] | str:
    """The prompt's group row in the training format, or the reason it has none (as :func:`best_worst`)."""
    outcome = best_worst(sample, min_gap)
    if not isinstance(outcome, Pair):
        return outcome
    kept = [i for i, text in enumerate(sample.responses) if text.strip()]
    return {
        "prompt": sample.prompt,
        "responses": [sample.responses[i] for i in kept],
        "scores": [sample.scores[i] for i in kept],
        "prompt_index": sample.index,
    }


def build_pairs(samples: list[PromptSamples], min_gap: float) -> tuple[list[Pair], dict[str, list[int]]]:
    """Pairs in prompt order, and ``{reason: [prompt indices]}`` for every prompt without one.

    ``len(pairs) + sum(len(v) for v in dropped.values()) == len(samples)``: every prompt is accounted for.
    """
    rows, dropped = training_rows(samples, min_gap, "best_worst")
    return [pair for pair in rows if isinstance(pair, Pair)], dropped


def training_rows(
    samples: list[PromptSamples], min_gap: float, pairing: str
) -> tuple[list[Pair | dict[str, Any]], dict[str, list[int]]]:
    """The round's training rows in prompt order (pairs, or group rows with ``listwise``), and
    ``{reason: [prompt indices]}`` for every prompt that gives none."""
    make = listwise if pairing == "listwise" else best_worst
    rows: list[Pair | dict[str, Any]] = []
    dropped: dict[str, list[int]] = {}
    for sample in samples:
        outcome = make(sample, min_gap)
        if isinstance(outcome, str):
            dropped.setdefault(outcome, []).append(sample.index)
        else:
            rows.append(outcome)
    return rows, dropped
