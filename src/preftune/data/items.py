"""The row training sees: one prompt with K >= 2 scored responses, as token ids. A preference pair is the row
``[chosen, rejected]`` with scores ``[1, 0]``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Row:
    """One prompt with K >= 2 responses as token ids, and their scores (higher is better; ties allowed).

    The model sees ``prompt_ids + responses[k]`` for each k and scores only the response part. Example (toy
    tokenizer, a string pair): prompt_ids = [BOS, *ids("Tell me: ...")], responses = [[*ids(" the cat ..."), EOS],
    [...]], scores = [1.0, 0.0]. ``source``/``index`` name the row in its file: ``("data/train.jsonl", 7)``.
    ``row_id`` is the row's slot in the run's table of rows (train rows 0..N-1, then eval rows), set by the
    runner; a precomputed reference looks its log-probs up by it (-1: not numbered).
    """

    prompt_ids: list[int]
    responses: list[list[int]]
    scores: list[float]
    source: str
    index: int
    row_id: int = -1

    @classmethod
    def pair(
        cls,
        prompt_ids: list[int],
        chosen_ids: list[int],
        rejected_ids: list[int],
        source: str = "",
        index: int = 0,
        row_id: int = -1,
    ) -> Row:
        """The row of one preference pair: chosen then rejected, scores [1, 0]."""
        return cls(prompt_ids, [chosen_ids, rejected_ids], [1.0, 0.0], source, index, row_id)

    @property
    def chosen_ids(self) -> list[int]:
        """The top-scored response (the first of those tied for the top): a pair's chosen one."""
        return self.responses[self.scores.index(max(self.scores))]

    @property
    def rejected_ids(self) -> list[int]:
        """The bottom-scored response (the last of those tied for the bottom): a pair's rejected one."""
        k = len(self.scores) - 1 - self.scores[::-1].index(min(self.scores))
        return self.responses[k]
