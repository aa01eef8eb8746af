"""Texts -> token ids, exact at the prompt/response boundary, then truncation to data.max_len.

The prompt and each response are tokenised separately and concatenated, so the scored tokens are exactly the
response's own. Tokenising ``prompt + response`` in one go can merge text across the boundary: with a BPE
that learned "helloworld", prompt "say hello" + response "world" would give [..., "helloworld"], leaving the
response no token of its own and shifting what gets scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import DataConfig
from .errors import DropRow
from .rows import GroupText, merge_duplicates

Ids = list[int]
_BATCH = 1000  # texts per tokenizer call: fast tokenizers parallelise within a call


class TextEncoder:
    """``tokenizer(texts, add_special_tokens=...)["input_ids"]``, through the Rust tokenizer's own
    ``encode_batch`` when it gives the same ids: that skips building a BatchEncoding (a third of the time of
    a call). The first batch of each ``add_special_tokens`` value is encoded both ways and compared; a
    tokenizer whose Python side changes anything (or that has no Rust backend) keeps the plain call."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self._same: dict[bool, bool] = {}  # add_special_tokens -> the backend gives the plain call's ids

    def __call__(self, texts: list[str], add_special_tokens: bool) -> list[Ids]:
        out: list[Ids] = []
        for start in range(0, len(texts), _BATCH):
            out.extend(self._batch(texts[start : start + _BATCH], add_special_tokens))
        return out

    def _batch(self, texts: list[str], special: bool) -> list[Ids]:
        if self._same.get(special, True) and self.backend is not None:
            fast = [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=special)]
            if special in self._same:
                return fast
            plain = self._plain(texts, special)
            self._same[special] = fast == plain
            return plain
        return self._plain(texts, special)

    def _plain(self, texts: list[str], special: bool) -> list[Ids]:
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=special)["input_ids"]]


def encode_groups(
    texts: Sequence[GroupText], tokenizer: Any, encoder: TextEncoder | None = None
) -> list[tuple[Ids, list[Ids]]]:
    """``(prompt_ids, [response_ids, ...])`` per group (a pair: ``[chosen, rejected]``), untruncated.

    Toy tokenizer, string row ``{"prompt": "hi", "chosen": " yo", ...}``: prompt_ids = [BOS, ids("hi")],
    chosen_ids = ids(" yo") + [EOS]. Chat-rendered prompt ``"<s><|user|>hi</s><|assistant|>"``: prompt_ids =
    ids of exactly that text, one BOS (the template wrote it; the tokenizer adds none).
    """
    encode = encoder or TextEncoder(tokenizer)
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    prompts: list[Ids] = [[] for _ in texts]
    for special in (True, False):
        which = [i for i, t in enumerate(texts) if t.prompt_special_tokens is special]
        encoded = encode([texts[i].prompt for i in which], add_special_tokens=special)
        for i, ids in zip(which, encoded, strict=True):
            # A prompt text that itself starts with the BOS string would otherwise get a second one.
            prompts[i] = ids[1:] if bos is not None and ids[:2] == [bos, bos] else ids
    # All responses of all groups in one flat list, so that the tokenizer batches across groups.
    flat = encode([r for t in texts for r in t.responses], add_special_tokens=False)
    if eos is not None:
        for ids in flat:
            if not ids or ids[-1] != eos:
                ids.append(eos)
    out: list[tuple[Ids, list[Ids]]] = []
    start = 0
    for prompt, text in zip(prompts, texts, strict=True):
        out.append((prompt, flat[start : start + len(text.responses)]))
        start += len(text.responses)
    return out


def truncate(prompt: Ids, responses: list[Ids], cfg: DataConfig, bos: int | None) -> tuple[Ids, list[Ids]]:
    """Fit prompt + each response into ``cfg.max_len`` per ``cfg.truncation``; raises :class:`DropRow`.

    The prompt is cut once, for the longest response; then each response on its own against max_len.
    Example, max_len 8, prompt [BOS p1 p2 p3 p4 p5 p6], responses [c1 c2 c3 c4] and [r1 r2 r3]:
    prompt_left keeps max(1, 8 - 4) = 4 prompt tokens, BOS first: [BOS p4 p5 p6], and both responses fit;
    response_right keeps all 7 prompt tokens and cuts the responses to [c1] and [r1]; drop discards the row.
    """
    keep_bos = bos is not None and prompt[:1] == [bos]

    def keep_last(ids: Ids, budget: int) -> Ids:
        if len(ids) <= budget:
            return ids
        if keep_bos:  # BOS counts towards the budget: the model never saw text without it
            return [ids[0], *ids[len(ids) - (budget - 1) :]]
        return ids[len(ids) - budget :]

    if cfg.max_prompt_len is not None:
        prompt = keep_last(prompt, cfg.max_prompt_len)
    longest = max(len(r) for r in responses)
    if len(prompt) + longest <= cfg.max_len:
        return prompt, responses
    if cfg.truncation == "drop":
        raise DropRow("too_long")
    if cfg.truncation == "prompt_left":
        # At least one prompt token stays: the first response token is scored from the position before it.
        prompt = keep_last(prompt, max(1, cfg.max_len - longest))
    room = cfg.max_len - len(prompt)
    if room < 1:
        raise DropRow("no_response_room")
    return prompt, [r[:room] for r in responses]


def fit_group(
    prompt: Ids, responses: list[Ids], scores: list[float], cfg: DataConfig, bos: int | None
) -> tuple[Ids, list[Ids], list[float], bool]:
    """:func:`truncate`, then responses cut to the same ids merged (highest score kept): ``(prompt,
    responses, scores, whether anything was cut)``. Raises ``identical_after_truncation`` when fewer than two
    responses, or only tied ones, are left to tell apart; a pair cut to a shared prefix is that drop."""
    cut_prompt, cut = truncate(prompt, responses, cfg, bos)
    truncated = len(cut_prompt) != len(prompt) or any(
        len(c) != len(r) for c, r in zip(cut, responses, strict=True)
    )
    keep, merged_scores = merge_duplicates([tuple(r) for r in cut], scores)
    if len(keep) < 2 or min(merged_scores) == max(merged_scores):
        raise DropRow("identical_after_truncation")
    return cut_prompt, [cut[i] for i in keep], merged_scores, truncated
