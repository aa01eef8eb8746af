"""The rows training sees: one preference pair, or one prompt with K scored responses, as token ids."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenizedPair:
    """One preference pair as token ids; the model sees ``prompt_ids + chosen_ids`` and
    ``prompt_ids + rejected_ids`` and scores only the response part.

    Example (toy tokenizer, string row): prompt_ids = [BOS, *ids("Tell me: ...")], chosen_ids =
    [*ids(" the cat ..."), EOS]. ``source``/``index`` name the row: ``("data/train.jsonl", 7)``.
    ``pair_id`` is the pair's slot in the run's table of pairs (train pairs 0..N-1, then eval pairs), set by
    the runner; a precomputed reference looks its log-probs up by it (-1: not numbered).
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    source: str
    index: int
    pair_id: int = -1

    @property
    def responses(self) -> list[list[int]]:
        """Its two responses as a group's: chosen, then rejected (the order a reference table keeps them in)."""
        return [self.chosen_ids, self.rejected_ids]


@dataclass
class TokenizedGroup:
    """One prompt with K >= 2 responses as token ids, and their scores (higher is better; ties allowed).

    The model sees ``prompt_ids + responses[k]`` for each k and scores only the response part; a pair is the
    group ``[chosen, rejected]`` with scores ``[1, 0]``. ``group_id`` is its slot in the run's table (-1: not
    numbered), like :attr:`TokenizedPair.pair_id`.
    """

    prompt_ids: list[int]
    responses: list[list[int]]
    scores: list[float]
    source: str
    index: int
    group_id: int = -1
