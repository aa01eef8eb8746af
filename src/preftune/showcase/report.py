"""The demo's report: PNG plots (matplotlib, Agg backend: no display needed) and one self-contained HTML page.

Inputs are the training run's ``metrics.jsonl`` rows and a :class:`DemoResults`; nothing here computes a metric.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError


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


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    picked = [(r["step"], r[key]) for r in rows if key in r]
    return [s for s, _ in picked], [v for _, v in picked]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the demo report needs matplotlib: pip install 'preftune[demo]'") from None
    matplotlib.use("Agg")  # files only; works without a display
    import matplotlib.pyplot as plt

    return plt


def write_plots(rows: list[dict[str, Any]], results: DemoResults, out: Path) -> list[Path]:
    """training.png (loss, accuracy, margins over steps, training and held-out) and sentiment.png."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = (
        ("loss", "DPO loss"),
        ("rewards/accuracies", "preference accuracy"),
        ("rewards/margins", "reward margin"),
    )
    for ax, (key, title) in zip(axes, panels, strict=True):
        steps, values = _series(rows, key)
        ax.plot(steps, values, color="#9ab", lw=1, label="training batch")
        steps, values = _series(rows, f"eval/{key}")
        ax.plot(steps, values, "o-", color="#c33", label="held-out movies")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    training = out / "training.png"
    fig.savefig(training, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
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
    plt.close(fig)
    return [training, sentiment]


def summary_rows(results: DemoResults) -> list[tuple[str, str, str]]:
    """(label, before, after) for each headline number, formatted; shared by the terminal table and the HTML."""
    return [
        (label, fmt.format(results.before[key]), fmt.format(results.after[key]))
        for key, label, fmt in ROWS
        if key in results.before and key in results.after
    ]


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
    "th{background:#f3f3f3}img{max-width:100%}"
)


def write_report(out: Path, rows: list[dict[str, Any]], results: DemoResults) -> Path:
    """``out/report.html`` with the plots of the training metrics ``rows`` beside it and ``out/results.json``;
    returns the HTML path."""
    images = write_plots(rows, results, out)
    (out / "results.json").write_text(results.to_json())
    esc = html.escape
    summary = _table(["", "before", "after"], [[esc(a), b, c] for a, b, c in summary_rows(results)])
    examples = _table(
        ["prompt", "before training", "after training"],
        [
            [esc(e.prompt), f"{esc(e.before)}<br><i>sentiment {e.before_sentiment:+.2f}</i>",
             f"{esc(e.after)}<br><i>sentiment {e.after_sentiment:+.2f}</i>"]
            for e in results.examples
        ],
    )  # fmt: skip
    settings = _table(["setting", "value"], [[esc(k), esc(str(v))] for k, v in results.settings.items()])
    timing = _table(["phase", "seconds"], [[esc(k), f"{v:.1f}"] for k, v in results.seconds.items()])
    plots = "".join(f'<p><img src="{esc(p.name)}" alt="{esc(p.stem)}"></p>' for p in images)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>preftune demo</title>
<style>{_STYLE}</style></head><body>
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
    path = out / "report.html"
    path.write_text(page)
    return path
