"""The in-memory data path as it was before the tokenised store, kept as the plain path the store is checked
against: every row read into a list, drawn by row objects, converted, tokenised by the tokenizer's own call
(not preftune's TextEncoder), truncated, in draw order."""

from __future__ import annotations

import random
from typing import Any

from preftune.config import DataConfig
from preftune.data import DataReport, Row
from preftune.data.errors import DropRow
from preftune.data.report import quote_row
from preftune.data.rows import GroupText, RowConverter
from preftune.data.sources import RawRow, read_source
from preftune.data.tokenize import encode_groups, fit_group


class PlainEncoder:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        if not texts:
            return []
        return [
            list(ids) for ids in self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
        ]


def drawn_rows(
    sources: list[list[RawRow]],
    names: list[str],
    probs: list[float] | None,
    max_samples: int | None,
    seed: int,
) -> tuple[list[RawRow], dict[str, dict[str, int]]]:
    """The draw over row objects, as preftune made it before it drew from row counts."""
    counts = {
        name: {"rows": len(rows), "used": 0, "repeated": 0} for name, rows in zip(names, sources, strict=True)
    }
    if probs is None:
        chosen = [row for rows in sources for row in rows]
        if max_samples is not None and max_samples < len(chosen):
            rng = random.Random(f"preftune-subset-{seed}")
            chosen = [chosen[i] for i in sorted(rng.sample(range(len(chosen)), max_samples))]
    else:
        total = max_samples if max_samples is not None else sum(len(rows) for rows in sources)
        chosen = []
        for i, rows in enumerate(sources):
            want = round(probs[i] / sum(probs) * total)
            rng = random.Random(f"preftune-mix-{seed}-{i}")
            drawn: list[RawRow] = []
            while len(drawn) < want:
                drawn.extend(rng.sample(rows, len(rows)))
            chosen.extend(drawn[:want])
        random.Random(f"preftune-interleave-{seed}").shuffle(chosen)
    for row in chosen:
        counts[row.source]["used"] += 1
    for c in counts.values():
        c["repeated"] = max(0, c["used"] - c["rows"])
    return chosen, counts


def plain_load(cfg: DataConfig, tokenizer: Any, split: str, seed: int) -> tuple[list[Row], DataReport]:
    if split == "train":
        names, probs, hf_split, limit = cfg.train, cfg.train_probs, cfg.train_split, cfg.max_samples
    else:
        names, probs, hf_split, limit = cfg.eval, None, cfg.eval_split, cfg.eval_max_samples
    rows, counts = drawn_rows([read_source(n, hf_split) for n in names], names, probs, limit, seed)
    report = DataReport(split=split, max_examples=cfg.report_examples, sources=counts, rows_read=len(rows))
    convert = RowConverter(cfg, tokenizer)
    texts: list[tuple[RawRow, GroupText]] = []
    for row in rows:
        try:
            texts.append((row, convert.group(row)))
        except DropRow as drop:
            report.drop(drop.reason, row.source, row.index, quote_row(row.data))
    out: list[Row] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    encoded = encode_groups([t for _, t in texts], tokenizer, PlainEncoder(tokenizer))  # type: ignore[arg-type]
    for (row, text), (prompt, responses) in zip(texts, encoded, strict=True):
        try:
            p, cut, scores, truncated = fit_group(prompt, responses, text.scores, cfg, bos)
        except DropRow as drop:
            report.drop(drop.reason, row.source, row.index, quote_row(row.data))
            continue
        report.truncated += truncated
        report.merged_responses += text.merged + len(responses) - len(cut)
        out.append(Row(p, cut, scores, row.source, row.index))
    report.kept = len(out)
    if convert.has_template:
        report.untemplated_prompts = sum(text.prompt_special_tokens for _, text in texts)
    return out, report
