"""The run report: one HTML page, with PNG plots beside it, of one or more training runs' output folders.

A run folder holds what ``preftune train`` wrote: ``metrics.jsonl`` (required), ``config.yaml`` and
``data_report.json``. The page shows each metric over steps (training and held-out in the same plot, runs
overlaid, one colour per run), the final metrics, the settings that differ between the runs (all of them for
one run) and each run's data report. Nothing here computes a metric; it reads and draws what the run logged.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote

from ..config import ConfigError
from ..io import write_atomic
from ..run_folder import RunFolder
from .run_record import RunRecord, read_run, run_labels

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The page ``preftune train`` writes into its output_dir, and ``preftune report``'s default output.
REPORT_NAME = RunFolder(Path()).report.name


class Section(NamedTuple):
    """One PNG (``<page stem>-<slug>.png``) under one heading; each panel is (metric key, panel title), drawn
    from the training rows' ``key`` and the evaluation rows' ``eval/<key>``."""

    slug: str
    title: str
    panels: tuple[tuple[str, str], ...]


SECTIONS = (
    Section("loss", "Loss", (("loss", "loss (with the NLL term when on)"), ("nll", "NLL of chosen per token"))),
    Section("preference", "Preference accuracy and reward margin", (
        ("rewards/accuracies", "accuracy: chosen reward > rejected (ties: wrong)"),
        ("rewards/margins", "margin: chosen reward - rejected reward"),
    )),
    Section("rewards", "Implicit rewards", (("rewards/chosen", "chosen"), ("rewards/rejected", "rejected"))),
    Section("logps", "Policy log-probs", (("logps/chosen", "chosen"), ("logps/rejected", "rejected"))),
    Section("optimizer", "Optimizer", (("lr", "learning rate"), ("grad_norm", "gradient norm before clipping"))),
)  # fmt: skip
FINAL_KEYS = (
    "loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected",
    "logps/chosen", "logps/rejected", "nll",
)  # fmt: skip
MISSING = "—"

PAGE_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}"
    "th{background:#f3f3f3}img{max-width:100%}"
)


class PlottingUnavailable(ConfigError):
    """matplotlib is not installed; the message says how to install it."""


def figure_class(purpose: str) -> type[Figure]:
    """matplotlib's ``Figure``, or a one-line refusal naming ``purpose``. A bare Figure renders PNGs with Agg
    and leaves pyplot's global backend alone, so a library call never changes a notebook's plotting."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlottingUnavailable(f"{purpose} needs matplotlib: pip install 'preftune[demo]'") from None
    return Figure


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table whose header is plain text (escaped here) and whose cells are HTML (escape text before)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of ``key`` in the rows that have it."""
    picked = [(r["step"], r[key]) for r in rows if key in r]
    return [s for s, _ in picked], [v for _, v in picked]


# ---------------------------------------------------------------- plots


def plotted_sections(runs: Sequence[RunRecord]) -> list[Section]:
    """SECTIONS with only the panels some run logged (no ``nll`` panel unless a run has one)."""

    def logged(key: str) -> bool:
        return any(series(r.train, key)[0] or series(r.evals, f"eval/{key}")[0] for r in runs)

    kept = [s._replace(panels=tuple(p for p in s.panels if logged(p[0]))) for s in SECTIONS]
    return [section for section in kept if section.panels]


def plot_section(
    figure: type[Figure], runs: Sequence[RunRecord], panels: tuple[tuple[str, str], ...], path: Path
) -> None:
    """One PNG: a panel per metric; per run (colour ``C<i>``) its training line and its held-out points."""
    from matplotlib.ticker import MaxNLocator  # importable: ``figure`` came from matplotlib

    fig = figure(figsize=(5.4 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, title) in zip(axes, panels, strict=True):
        for i, run in enumerate(runs):
            colour = f"C{i % 10}"
            steps, values = series(run.train, key)
            if steps:  # small markers keep a one-step run visible
                ax.plot(steps, values, ".-", color=colour, lw=1, ms=3, label=f"{run.label} training")
            steps, values = series(run.evals, f"eval/{key}")
            if steps:
                ax.plot(steps, values, "o--", color=colour, lw=1.5, ms=5, label=f"{run.label} held-out")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # no step 0.96
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_plots(figure: type[Figure], runs: Sequence[RunRecord], page: Path) -> list[tuple[str, Path]]:
    """``<page stem>-<slug>.png`` beside the page (so two reports in one folder keep their own plots); returns
    (section title, PNG path) in page order."""
    written = []
    for section in plotted_sections(runs):
        path = page.with_name(f"{page.stem}-{section.slug}.png")
        plot_section(figure, runs, section.panels, path)
        written.append((section.title, path))
    return written


# ---------------------------------------------------------------- tables


def setting_text(value: Any) -> str:
    """A setting as YAML would spell it (``null``, ``true``, ``[0.9, 0.95]``); strings as they are."""
    return value if isinstance(value, str) else json.dumps(value)


def differing_settings(runs: Sequence[RunRecord]) -> list[str]:
    """Keys, in config order, whose values differ between the runs (or are missing in some); all for one run."""
    keys = list(dict.fromkeys(key for run in runs for key in run.settings))
    if len(runs) == 1:
        return keys
    return [k for k in keys if len({repr(run.settings.get(k, MISSING)) for run in runs}) > 1]


def settings_table(runs: Sequence[RunRecord]) -> str:
    keys = differing_settings(runs)
    if not keys:
        return "<p>Every setting is the same in all runs.</p>"
    rows = [
        [html.escape(key)]
        + [html.escape(setting_text(run.settings[key])) if key in run.settings else MISSING for run in runs]
        for key in keys
    ]
    return html_table(["setting", *(run.label for run in runs)], rows)


def final_metrics_table(runs: Sequence[RunRecord]) -> str:
    """Per run: where it ended, then each metric at its last logged training step and its last evaluation."""

    def last(rows: list[dict[str, Any]], key: str, fmt: str = "{:.4g}") -> str:
        values = series(rows, key)[1]
        return fmt.format(values[-1]) if values else MISSING

    skipped = [f"{sum(series(run.train, 'skipped_steps')[1]):.0f}" for run in runs]
    rows = [
        ["last training step"] + [last(run.train, "step", "{:.0f}") for run in runs],
        ["pairs consumed"] + [last(run.train, "consumed_samples", "{:.0f}") for run in runs],
        ["skipped steps (non-finite)", *skipped],
    ]
    parts = (
        ("training, last logged step", "", [run.train for run in runs]),
        ("held-out, last evaluation", "eval/", [run.evals for run in runs]),
    )
    for what, prefix, rows_per_run in parts:
        for key in FINAL_KEYS:
            cells = [last(run_rows, prefix + key) for run_rows in rows_per_run]
            if any(c != MISSING for c in cells):
                rows.append([html.escape(f"{key} ({what})"), *cells])
    return html_table(["", *(run.label for run in runs)], rows)


def data_table(runs: Sequence[RunRecord]) -> str:
    """Rows read, kept, truncated and dropped per reason, per run and split (from ``data_report.json``)."""
    rows = []
    for run in runs:
        if not run.data:
            rows.append([html.escape(run.label), MISSING, "no data_report.json", "", "", ""])
        for split, report in run.data.items():
            dropped = ", ".join(f"{reason}: {n}" for reason, n in report.get("dropped", {}).items()) or "none"
            # Every cell escaped: data_report.json is a file like any other, and may not be ours.
            counts = [
                html.escape(str(report.get(key, MISSING))) for key in ("rows_read", "kept", "truncated")
            ]
            rows.append([html.escape(run.label), html.escape(split), *counts, html.escape(dropped)])
    return html_table(["run", "split", "rows read", "kept", "truncated", "dropped (reason: rows)"], rows)


def runs_table(runs: Sequence[RunRecord]) -> str:
    rows = [
        [html.escape(run.label), f"<code>{html.escape(str(run.folder))}</code>", str(len(run.train)),
         str(len(run.evals))]
        for run in runs
    ]  # fmt: skip
    return html_table(["run", "folder", "logged training steps", "evaluations"], rows)


# ---------------------------------------------------------------- the page


def render_page(runs: Sequence[RunRecord], plots: list[tuple[str, Path]]) -> str:
    esc = html.escape
    title = "preftune report: " + ", ".join(run.label for run in runs)
    figures = "".join(
        f'<h3>{esc(heading)}</h3><p><img src="{esc(quote(path.name))}" alt="{esc(heading)}"></p>'
        for heading, path in plots
    )
    settings_heading = "Settings" if len(runs) == 1 else "Settings that differ between the runs"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>{PAGE_STYLE}</style></head><body>
<h1>{esc(title)}</h1>
<h2>Runs</h2>{runs_table(runs)}
<h2>Final metrics</h2>{final_metrics_table(runs)}
<h2>Curves</h2>
<p>Lines with small dots: training, each point the mean over the pairs of the steps since the previous
logged step. Dashed lines with circles: held-out evaluation (<code>eval/</code>), exact pair-weighted means
over the whole eval set. Rewards are beta times the policy's log-prob minus the reference's; accuracy counts
pairs whose chosen reward is strictly above the rejected one, beyond rounding (a margin within rounding of 0 is
a tie, and counts as wrong).</p>
{figures}
<h2>{settings_heading}</h2>{settings_table(runs)}
<h2>Data</h2>{data_table(runs)}
<p>Per-step numbers: each run's <code>metrics.jsonl</code>; the dropped rows themselves: its
<code>data_report.json</code>.</p>
</body></html>
"""


def write_run_report(folders: Sequence[str | Path], output: str | Path | None = None) -> Path:
    """Write the report of the run ``folders`` to ``output`` (default ``<first folder>/report.html``) with its
    PNGs beside it; returns the page's path."""
    if not folders:
        raise ConfigError("report: give at least one run folder")
    figure = figure_class("the run report")
    paths = [Path(f) for f in folders]
    runs = [read_run(folder, label) for folder, label in zip(paths, run_labels(paths), strict=True)]
    page = Path(output) if output is not None else paths[0] / REPORT_NAME
    page.parent.mkdir(parents=True, exist_ok=True)
    plots = write_plots(figure, runs, page)
    write_atomic(page, render_page(runs, plots))
    return page
