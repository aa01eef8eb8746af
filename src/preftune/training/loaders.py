"""From data to the trainer's dataloaders: the run's splits (loaded, checked, numbered, reported) and the
train and eval loaders over them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, Subset

from ..config import Config, ConfigError
from ..data import DataError, DataReport, Row, load_rows, write_data_report
from ..data.sampler import ResumableSampler
from ..data.view import padded_widths, response_counts
from ..layouts import Layout
from ..reference.precompute import number_rows
from ..run_folder import RunFolder
from ..strategy import Strategy
from ..strategy.launch import launched_local_rank
from .budget import TokenBudgetSteps, greedy_parts, oversized

# The run's rows: pairs and prompts with K scored responses, in any mix.
Items = Sequence[Row]


def load_splits(
    cfg: Config, tokenizer: Any, out: Path, need_train: bool, log: Any, strategy: Strategy
) -> tuple[Items, Items]:
    """The run's train and eval rows, numbered for the reference table, with a data report written and every
    size this run cannot train on refused (naming the key)."""
    train_rows, eval_rows = _read_splits(cfg, tokenizer, out, need_train, log, strategy)
    if 0 < len(eval_rows) < strategy.world_size:
        raise ConfigError(
            f"data.eval: {len(eval_rows)} usable evaluation rows for {strategy.world_size} processes; "
            "each process needs at least one"
        )
    if need_train and len(train_rows) < cfg.train.batch_size:
        raise ConfigError(
            f"train.batch_size: {len(train_rows)} usable training rows are fewer than one batch of "
            f"{cfg.train.batch_size} (see {out / 'data_report.json'})"
        )
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        _refuse_wide_rows_under_ld_dpo(cfg, split, rows)
    number_rows(train_rows, eval_rows)
    left_out = len(train_rows) % cfg.train.batch_size
    if need_train and left_out:
        log(
            f"data train: {left_out} rows per epoch do not fill a last batch of {cfg.train.batch_size} and are "
            "left out of that epoch (a different few each epoch when data.shuffle is on)"
        )
    return train_rows, eval_rows


def _refuse_wide_rows_under_ld_dpo(cfg: Config, split: str, rows: Items) -> None:
    """LD-DPO weighs each response's tokens past its pair's shared length; a row of K > 2 responses has no one
    partner, so it is refused here, before training, rather than when its micro-batch comes."""
    if cfg.loss.ld_alpha is None:
        return
    wide = [i for i, k in enumerate(response_counts(rows)) if k != 2]
    if wide:
        row = rows[wide[0]]
        raise DataError(
            f"data.{split}: {row.source} row {row.index} has {len(row.responses)} responses ({len(wide)} rows "
            "have more than two); loss.ld_alpha (LD-DPO) trains pairs only"
        )


def _read_splits(
    cfg: Config, tokenizer: Any, out: Path, need_train: bool, log: Any, strategy: Strategy
) -> tuple[Items, Items]:
    reports = {}
    train_rows: Items = []
    if need_train:
        if not cfg.data.train:
            raise ConfigError("data.train: no training source given")
        train_rows, reports["train"] = _open_split(cfg, tokenizer, "train", out, log, strategy)
    eval_rows: Items = []
    if cfg.data.eval:
        eval_rows, reports["eval"] = _open_split(cfg, tokenizer, "eval", out, log, strategy)
    if not strategy.is_main():
        return train_rows, eval_rows
    path = write_data_report(reports, out)
    for split, report in reports.items():
        drops = ", ".join(f"{n} {reason}" for reason, n in sorted(report.dropped.items())) or "none"
        log(
            f"data {split}: {report.rows_read} rows, {report.kept} kept ({report.truncated} of them truncated), "
            f"dropped: {drops} (details: {path})"
        )
        if report.untemplated_prompts:
            log(
                f"data {split}: {report.untemplated_prompts} plain-string prompts are used as plain text, though the "
                "tokenizer has a chat template; --data.apply_chat_template true renders each as a user turn"
            )
    return train_rows, eval_rows


def _open_split(
    cfg: Config, tokenizer: Any, split: Literal["train", "eval"], out: Path, log: Any, strategy: Strategy
) -> tuple[Items, DataReport]:
    """One split's rows through its tokenised store. The first process of each node builds a missing store
    while the others wait, then they all map the same files (on a filesystem the nodes share, the builders'
    atomic renames keep one copy); a build that fails stops every process, with the builder's error."""
    root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else RunFolder(out).data_cache
    builds = launched_local_rank() == 0
    failure: BaseException | None = None
    if builds:
        try:
            rows, report = load_rows(cfg.data, tokenizer, split, cfg.seed, root)
        except OSError as exc:
            failure = ConfigError(f"data.cache_dir: cannot write the tokenised store under {root}: {exc}")
        except Exception as exc:  # re-raised below, once every process knows the build failed
            failure = exc
    if strategy.world_size > 1 and strategy.all_reduce({"failed": float(failure is not None)})["failed"]:
        raise failure or DataError(
            f"data.{split}: the process building its tokenised store failed (see its error)"
        )
    if failure is not None:
        raise failure
    if not builds:
        rows, report = load_rows(cfg.data, tokenizer, split, cfg.seed, root, build=False)
    store = rows.store
    if store.reused:
        log(
            f"data {split}: reusing the tokenised store {store.folder} ({len(rows)} rows; same sources, tokenizer and data settings)"
        )
    else:
        log(f"data {split}: tokenised {len(rows)} rows into {store.folder} in {store.build_seconds:.1f} s")
    return rows, report


def make_train_loader(
    rows: Items, layout: Layout, cfg: Config, strategy: Strategy, log: Any = print
) -> DataLoader | TokenBudgetSteps:
    """Micro-batches of ``train.micro_batch_size`` rows; with ``train.micro_batch_tokens``, whole steps of this
    process's rows (the same rows) that :class:`TokenBudgetSteps` cuts by tokens."""
    lengths = padded_widths(rows) if cfg.data.group_by_length else None
    sampler = ResumableSampler(
        len(rows),
        cfg.train.batch_size,
        cfg.seed,
        cfg.data.shuffle,
        strategy.rank,
        strategy.world_size,
        lengths,
    )
    dataset: Any = rows  # a list is a valid map-style dataset; torch's stubs only admit Dataset
    budget = cfg.train.micro_batch_tokens
    if not budget:
        return DataLoader(
            dataset,
            batch_size=cfg.train.micro_batch_size,
            sampler=sampler,
            collate_fn=layout.collate,
            generator=_private_generator(),
        )
    _report_oversized(rows, layout, budget, log)
    step_rows = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size // strategy.world_size,
        sampler=sampler,
        collate_fn=list,  # the rows as they are: TokenBudgetSteps collates each micro-batch it cuts
        generator=_private_generator(),
    )
    return TokenBudgetSteps(
        step_rows, layout.collate, layout.laid_out_tokens, budget, cfg.train.micro_batch_size, strategy
    )


def _report_oversized(rows: Items, layout: Layout, budget: int, log: Any) -> None:
    """Said once, before training: every row is known by then. A row over the budget is trained in a
    micro-batch of its own rather than refused, because it cannot be split and data.max_len already admitted
    it; whoever wants such rows gone lowers data.max_len."""
    over: list[tuple[int, Any]] = oversized(rows, layout.laid_out_tokens, budget)
    if over:
        tokens, row = max(over, key=lambda found: found[0])
        log(
            f"train.micro_batch_tokens: {len(over)} training rows lay out more than {budget} tokens each "
            f"({layout.name}; the longest {tokens}, {row.source} row {row.index}); each trains in a micro-batch "
            "of its own"
        )


def _private_generator() -> torch.Generator:
    """A generator of the loader's own: each new iterator draws a seed from it, and drawing from the global
    RNG instead would shift dropout masks whenever iterators are made at other points (a resumed run makes
    one mid-epoch), so a resumed run with dropout would no longer equal the uninterrupted one."""
    return torch.Generator().manual_seed(0)


def make_eval_loader(rows: Items, layout: Layout, cfg: Config, strategy: Strategy) -> DataLoader | None:
    if not rows:
        return None
    size = cfg.train.eval_micro_batch_size or cfg.train.micro_batch_size
    # Disjoint shards with no padding or repeats: metric sums over processes then cover each row once. A
    # lazy view, so the rows stay in the store until a batch asks for them.
    dataset: Any = Subset(rows, range(strategy.rank, len(rows), strategy.world_size))  # type: ignore[arg-type]
    if cfg.train.micro_batch_tokens:
        # Cut by the budget up front, each micro-batch one item collated as it is (batch_size None). Shards
        # may then differ in micro-batches; evaluation runs them in lockstep, which repeats a short shard's last.
        parts: Any = greedy_parts(dataset, layout.laid_out_tokens, cfg.train.micro_batch_tokens, size)
        return DataLoader(parts, batch_size=None, collate_fn=layout.collate, generator=_private_generator())
    return DataLoader(
        dataset,
        batch_size=size,
        shuffle=False,
        collate_fn=layout.collate,
        generator=_private_generator(),
    )
