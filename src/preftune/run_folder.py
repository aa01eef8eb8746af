"""What a run writes into its ``output_dir``, named in one place (the README's table of a run's files lists the
same): everyone who writes or reads one of these asks :class:`RunFolder` for its path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"  # the resolved configuration

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def data_report(self) -> Path:
        return self.root / "data_report.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def eval_metrics(self) -> Path:
        return self.root / "eval_metrics.json"  # written by ``preftune eval``

    @property
    def final(self) -> Path:
        return self.root / "final"  # the exported Hugging Face model

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def data_cache(self) -> Path:
        return self.root / "data_cache"  # the tokenised stores, unless data.cache_dir names another folder

    @property
    def ref_cache(self) -> Path:
        return self.root / "ref_cache"  # the precomputed reference tables, unless ref.cache_dir names another
