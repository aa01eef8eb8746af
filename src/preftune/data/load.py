"""``load_pairs``: configured sources in, tokenised pairs and a report out.

Order of work: read every source, mix/select rows, turn each row into texts (shape rules in rows.py),
tokenise all texts in batches, truncate. A row that fails a per-row check is counted under its reason in the
report; a problem with the files or the configuration raises :class:`DataError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..config import DataConfig
from .errors import DataError, DropRow
from .report import DataReport
from .rows import PairText, RowConverter
from .sources import RawRow, read_source, select_rows
from .tokenize import encode_pairs, truncate


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


def load_pairs(
    cfg: DataConfig, tokenizer: Any, split: Literal["train", "eval"], seed: int
) -> tuple[list[TokenizedPair], DataReport]:
    """Tokenised pairs for ``split`` and the report of what was read, kept and dropped.

    "train" uses data.train / train_probs / train_split / max_samples; "eval" uses data.eval / eval_split /
    eval_max_samples and never mixes by probability.
    """
    if split == "train":
        names, probs, hf_split, limit = cfg.train, cfg.train_probs, cfg.train_split, cfg.max_samples
    else:
        names, probs, hf_split, limit = cfg.eval, None, cfg.eval_split, cfg.eval_max_samples
    if not names:
        raise DataError(f"data.{split}: no {split} source given.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(
            f"data.{split}: {', '.join(repeated)} listed more than once; list each source once "
            "(use data.train_probs to weight it)."
        )
    if probs is not None and len(probs) != len(names):
        raise DataError(f"data.train_probs: has {len(probs)} values for {len(names)} sources.")
    sources = [read_source(name, hf_split) for name in names]
    rows, counts = select_rows(sources, names, probs, limit, seed)
    report = DataReport(split=split, max_examples=cfg.report_examples, sources=counts, rows_read=len(rows))

    convert = RowConverter(cfg, tokenizer)
    texts: list[tuple[RawRow, PairText]] = []
    for row in rows:
        try:
            texts.append((row, convert(row)))
        except DropRow as drop:
            report.drop(drop.reason, row.source, row.index, row.data)

    pairs: list[TokenizedPair] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    encoded = encode_pairs([text for _, text in texts], tokenizer)
    for (row, _), (prompt, chosen, rejected) in zip(texts, encoded, strict=True):
        try:
            p, c, r = truncate(prompt, chosen, rejected, cfg, bos)
            if c == r:  # cut to a shared prefix: the pair no longer tells the two answers apart
                raise DropRow("identical_after_truncation")
        except DropRow as drop:
            report.drop(drop.reason, row.source, row.index, row.data)
            continue
        if (len(p), len(c), len(r)) != (len(prompt), len(chosen), len(rejected)):
            report.truncated += 1
        pairs.append(TokenizedPair(p, c, r, row.source, row.index))
    report.kept = len(pairs)
    if convert.has_template:
        report.untemplated_prompts = sum(text.prompt_special_tokens for _, text in texts)
    return pairs, report
