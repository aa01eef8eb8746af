"""The lines ``preftune train`` ends with: what the run reached and where everything it wrote is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import read_jsonl
from ..run_folder import RunFolder

# (label, metrics key without the eval/ prefix, format)
_SHOWN = (
    ("loss", "loss", "{:.4f}"),
    ("reward accuracy", "rewards/accuracies", "{:.3f}"),
    ("reward margin", "rewards/margins", "{:+.4f}"),
    ("chosen reward", "rewards/chosen", "{:+.4f}"),
    ("rejected reward", "rewards/rejected", "{:+.4f}"),
)


def _last(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    return next((row for row in reversed(rows) if key in row), None)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{seconds:.1f} s"


def run_summary(output_dir: Path, seconds: float) -> str:
    """A table of the last logged training step beside the last evaluation, then the run's files, e.g.::

    done in 1 min 12 s: 40 steps (2.00 epochs, 320 pairs)
                     train (step 40)  held-out (step 40)
    loss                      0.2113              0.2512
    ...
    model        runs/mine/final   (AutoModelForCausalLM.from_pretrained)
    """
    metrics = RunFolder(output_dir).metrics
    rows = read_jsonl(metrics) if metrics.is_file() else []
    train, held_out = _last(rows, "loss"), _last(rows, "eval/loss")
    lines = [f"done in {_duration(seconds)}"]
    if train is not None:
        lines[0] += (
            f": {train['step']} steps ({train['epoch']:.2f} epochs, {train['consumed_samples']} pairs)"
        )
    columns = [(f"train (step {train['step']})", "", train)] if train else []
    if held_out is not None:
        columns.append((f"held-out (step {held_out['step']})", "eval/", held_out))
    if columns:
        lines.append(f"{'':18}" + "".join(f"{title:>22}" for title, _, _ in columns))
        for label, key, fmt in _SHOWN:
            cells = [
                fmt.format(row[prefix + key]) if prefix + key in row else "-" for _, prefix, row in columns
            ]
            lines.append(f"{label:18}" + "".join(f"{cell:>22}" for cell in cells))
    files = (
        ("model", RunFolder(output_dir).final, "(AutoModelForCausalLM.from_pretrained)"),
        ("metrics", metrics, "(one JSON object per logged step)"),
        ("report", RunFolder(output_dir).report, ""),
        ("data report", RunFolder(output_dir).data_report, "(rows kept and dropped, per reason)"),
        ("checkpoints", RunFolder(output_dir).checkpoints, "(rerun the same command to resume)"),
    )
    lines += [f"{name:13}{path}   {note}".rstrip() for name, path, note in files if path.exists()]
    return "\n".join(lines)
