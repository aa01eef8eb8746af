"""A training run's output folder as the report reads it: its metrics rows split into training and evaluation,
its settings and its data report; refusing, naming the file, what is not a run folder."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, flatten
from ..data import DataError
from ..io import read_json
from ..run_folder import RunFolder


@dataclass
class RunRecord:
    folder: Path
    label: str  # the legend and column name: the folder's name, or its path where two names collide
    train: list[dict[str, Any]]  # metrics.jsonl rows of training steps
    evals: list[dict[str, Any]]  # rows of evaluations (keys ``eval/...``)
    settings: dict[str, Any]  # config.yaml as dotted keys; empty without one
    data: dict[str, Any]  # data_report.json by split; empty without one


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``. A last line cut short (a run killed mid-write, or one still writing)
    is left out, as the trainer itself does on resume; a bad line elsewhere is an error naming it."""
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise DataError(f"{path}:{number}: not a JSON line") from None
        if not isinstance(row, dict) or "step" not in row:
            raise DataError(f"{path}:{number}: a metrics row is a JSON object with a step")
        odd = next((key for key, value in row.items() if not _is_number(value)), None)
        if odd is not None:
            raise DataError(f"{path}:{number}: {odd} is {row[odd]!r}; every metrics value is a number")
        rows.append(row)
    if not rows:
        raise DataError(f"{path} has no logged steps yet")
    return rows


def _is_number(value: Any) -> bool:
    """JSON numbers (NaN and infinities included: a run logs them when a loss diverges), not booleans."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_run(folder: Path, label: str) -> RunRecord:
    if not folder.is_dir():
        raise ConfigError(f"run folder {folder} does not exist")
    metrics = RunFolder(folder).metrics
    if not metrics.is_file():
        raise ConfigError(f"{folder} has no metrics.jsonl: not the output_dir of a training run")
    rows = read_metrics(metrics)
    config, data = RunFolder(folder).config, RunFolder(folder).data_report
    return RunRecord(
        folder=folder,
        label=label,
        train=[r for r in rows if "loss" in r],
        evals=[r for r in rows if "eval/loss" in r],
        settings=flatten(yaml.safe_load(config.read_text()) or {}) if config.is_file() else {},
        data=read_json(data) if data.is_file() else {},
    )


def run_labels(folders: Sequence[Path]) -> list[str]:
    """Folder names; the paths as given when two runs share a name (``a/run`` and ``b/run``)."""
    names = [f.resolve().name for f in folders]
    return names if len(set(names)) == len(names) else [str(f) for f in folders]
