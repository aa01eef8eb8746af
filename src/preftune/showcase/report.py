"""The demo's report: PNG plots (matplotlib's Agg renderer: no display needed) and one self-contained HTML page.

Inputs are the training run's ``metrics.jsonl`` rows and a :class:`DemoResults`; nothing here computes a metric.
The page's table, style and plotting library come from the run report (:mod:`preftune.training.report`).
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..run_folder import RunFolder
from ..training.report import PAGE_STYLE, figure_class, html_table, series


@dataclass
class Example:
    prompt: str
    before: str
    after: str
    before_sentiment: float
    after_sentiment: float


@dataclass
class DemoResults:
    model: str
    before: dict[str, float]  # eval/rewards/accuracies, eval/rewards/margins, sentiment, kl
    after: dict[str, float]
    before_sentiments: list[float]
    after_sentiments: list[float]
    examples: list[Example]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


ROWS = (  # (results key, label, format)
    ("eval/rewards/accuracies", "held-out preference accuracy", "{:.3f}"),
    ("eval/rewards/margins", "held-out mean reward margin", "{:+.4f}"),
    ("sentiment", "mean VADER sentiment of generations", "{:+.3f}"),
    ("kl", "KL(policy || reference) per response, nats", "{:.3f}"),
)


def write_plots(rows: list[dict[str, Any]], results: DemoResults, out: Path) -> list[Path]:
    """training.png (loss, accuracy, margins over steps, training and held-out) and sentiment.png."""
    figure = figure_class("the demo report")
    fig = figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    panels = (
        ("loss", "DPO loss"),
        ("rewards/accuracies", "preference accuracy"),
        ("rewards/margins", "reward margin"),
    )
    for ax, (key, title) in zip(axes, panels, strict=True):
        steps, values = series(rows, key)
        ax.plot(steps, values, color="#9ab", lw=1, label="training batch")
        steps, values = series(rows, f"eval/{key}")
        ax.plot(steps, values, "o-", color="#c33", label="held-out movies")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    training = out / "training.png"
    fig.savefig(training, dpi=110)

    fig = figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    bins = [i / 10 for i in range(-10, 11)]
    ax.hist(
        results.before_sentiments,
        bins=bins,
        alpha=0.6,
        label=f"before (mean {results.before['sentiment']:+.2f})",
    )
    ax.hist(
        results.after_sentiments,
        bins=bins,
        alpha=0.6,
        label=f"after (mean {results.after['sentiment']:+.2f})",
    )
    ax.set_xlabel("VADER compound sentiment of a generated review")
    ax.set_ylabel("generations")
    ax.set_title("held-out movies: the model's own reviews")
    ax.legend()
    fig.tight_layout()
    sentiment = out / "sentiment.png"
    fig.savefig(sentiment, dpi=110)
    return [training, sentiment]


def summary_rows(results: DemoResults) -> list[tuple[str, str, str]]:
    """(label, before, after) for each headline number, formatted; shared by the terminal table and the HTML."""
    return [
        (label, fmt.format(results.before[key]), fmt.format(results.after[key]))
        for key, label, fmt in ROWS
        if key in results.before and key in results.after
    ]


def write_report(out: Path, rows: list[dict[str, Any]], results: DemoResults) -> Path:
    """``out/report.html`` with the plots of the training metrics ``rows`` beside it and ``out/results.json``;
    returns the HTML path."""
    images = write_plots(rows, results, out)
    (out / "results.json").write_text(results.to_json())
    esc = html.escape
    summary = html_table(["", "before", "after"], [[esc(a), b, c] for a, b, c in summary_rows(results)])
    examples = html_table(
        ["prompt", "before training", "after training"],
        [
            [esc(e.prompt), f"{esc(e.before)}<br><i>sentiment {e.before_sentiment:+.2f}</i>",
             f"{esc(e.after)}<br><i>sentiment {e.after_sentiment:+.2f}</i>"]
            for e in results.examples
        ],
    )  # fmt: skip
    settings = html_table(["setting", "value"], [[esc(k), esc(str(v))] for k, v in results.settings.items()])
    timing = html_table(["phase", "seconds"], [[esc(k), f"{v:.1f}"] for k, v in results.seconds.items()])
    plots = "".join(f'<p><img src="{esc(p.name)}" alt="{esc(p.stem)}"></p>' for p in images)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>preftune demo</title>
<style>{PAGE_STYLE}</style></head><body>
<h1>preftune demo: DPO on Rotten Tomatoes reviews</h1>
<p>Model <code>{esc(results.model)}</code>, trained to prefer a fresh (positive) critic snippet over a rotten one
for the same movie, evaluated on movies never seen in training. Accuracy counts held-out pairs whose chosen reward
is strictly above the rejected one (ties count as wrong, so "before" is 0: the policy is the reference). Sentiment
is VADER's compound score of the model's own sampled reviews. KL is a Monte Carlo estimate on the trained
policy's samples: the mean over responses of the summed per-token log-ratio log &pi;(y|x) &minus; log
&pi;<sub>ref</sub>(y|x) (0 before training by construction).</p>
{summary}
<h2>Training</h2>{plots}
<h2>The model's own words</h2>{examples}
<h2>Run</h2>{settings}{timing}
<p>Per-step metrics: <code>metrics.jsonl</code>; all numbers above: <code>results.json</code>.</p>
</body></html>
"""
    path = RunFolder(out).report
    path.write_text(page)
    return path
