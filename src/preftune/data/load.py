"""``load_pairs`` / ``load_groups``: configured sources in, tokenised pairs or prompt groups and a report out.

Order of work: read every source, mix/select rows, turn each row into texts (shape rules in rows.py),
tokenise all texts in batches, truncate. Both entry points run this one pipeline on groups (a pair is the
group ``[chosen, rejected]`` with scores [1, 0]); they differ only in which row shapes they accept. A row that fails a per-row check is counted under its reason in the
report; a problem with the files or the configuration raises :class:`DataError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..config import DataConfig
from .errors import DataError, DropRow
from .report import DataReport
from .rows import GroupText, RowConverter
from .sources import RawRow, read_source, select_rows
from .tokenize import encode_groups, fit_group


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


def load_pairs(
    cfg: DataConfig, tokenizer: Any, split: Literal["train", "eval"], seed: int
) -> tuple[list[TokenizedPair], DataReport]:
    """Tokenised pairs for ``split`` and the report of what was read, kept and dropped.

    "train" uses data.train / train_probs / train_split / max_samples; "eval" uses data.eval / eval_split /
    eval_max_samples and never mixes by probability. Only pair rows: a row with K responses is read as a
    pair row (and so refused or dropped); :func:`load_groups` reads those.
    """
    groups, report = _load(cfg, tokenizer, split, seed, lambda convert, row: GroupText.of_pair(convert(row)))
    # A kept pair is never merged (that leaves one response, a drop), so responses stay [chosen, rejected].
    pairs = [TokenizedPair(g.prompt_ids, g.responses[0], g.responses[1], g.source, g.index) for g in groups]
    return pairs, report


def load_groups(
    cfg: DataConfig, tokenizer: Any, split: Literal["train", "eval"], seed: int
) -> tuple[list[TokenizedGroup], DataReport]:
    """Tokenised prompt groups for ``split`` from any mix of group rows and pair rows, and the report.

    Same sources, mixing and limits as :func:`load_pairs`. A pair row gives the group ``[chosen, rejected]``
    with scores [1.0, 0.0] and the same ids load_pairs gives it; a group row keeps its response order, less
    merged duplicates and what data.max_responses leaves out. ``report.merged_responses`` counts the merges.
    """
    return _load(cfg, tokenizer, split, seed, RowConverter.group)


def _load(
    cfg: DataConfig,
    tokenizer: Any,
    split: Literal["train", "eval"],
    seed: int,
    to_group: Callable[[RowConverter, RawRow], GroupText],
) -> tuple[list[TokenizedGroup], DataReport]:
    rows, report = _read_rows(cfg, split, seed)
    convert = RowConverter(cfg, tokenizer)
    texts: list[tuple[RawRow, GroupText]] = []
    for row in rows:
        try:
            texts.append((row, to_group(convert, row)))
        except DropRow as drop:
            report.drop(drop.reason, row.source, row.index, row.data)

    groups: list[TokenizedGroup] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    encoded = encode_groups([text for _, text in texts], tokenizer)
    for (row, text), (prompt, responses) in zip(texts, encoded, strict=True):
        try:
            p, cut, scores, truncated = fit_group(prompt, responses, text.scores, cfg, bos)
        except DropRow as drop:
            report.drop(drop.reason, row.source, row.index, row.data)
            continue
        report.truncated += truncated
        report.merged_responses += text.merged + len(responses) - len(cut)
        groups.append(TokenizedGroup(p, cut, scores, row.source, row.index))
    report.kept = len(groups)
    if convert.has_template:
        report.untemplated_prompts = sum(text.prompt_special_tokens for _, text in texts)
    return groups, report


def _read_rows(
    cfg: DataConfig, split: Literal["train", "eval"], seed: int
) -> tuple[list[RawRow], DataReport]:
    """The split's rows after mixing and limits, and a report that has counted them."""
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
    return rows, DataReport(
        split=split, max_examples=cfg.report_examples, sources=counts, rows_read=len(rows)
    )
