"""report.html: written by every training run (log.report), and by ``preftune report RUN [RUN ...]``."""

from __future__ import annotations

import json
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from launch import run_cli
from preftune import cli
from preftune.config import ConfigError, config_keys
from preftune.data import DataError
from preftune.io import read_jsonl
from preftune.training import report, run_record, runner
from toy_env import toy_config, toy_workspace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTION_TITLES = [
    "Loss", "Preference accuracy and reward margin", "Implicit rewards", "Policy log-probs", "Optimizer",
]  # fmt: skip


class PageParser(HTMLParser):
    """The parts of a report page the tests read: title, headings, image sources, tables under each h2."""

    def __init__(self) -> None:
        super().__init__()
        self.title = ""
        self.headings: dict[str, list[str]] = {"h1": [], "h2": [], "h3": []}
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}  # by the h2 heading above the table
        self.tags: set[str] = set()
        self._open: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        elif tag == "table":
            self.tables[self.headings["h2"][-1]] = []
        elif tag == "tr":
            self.tables[self.headings["h2"][-1]].append([])
        if tag in ("title", "h1", "h2", "h3", "td", "th"):
            self._open, self._text = tag, ""

    def handle_data(self, data: str) -> None:
        if self._open:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag != self._open:
            return
        if tag == "title":
            self.title = self._text
        elif tag in self.headings:
            self.headings[tag].append(self._text)
        else:
            self.tables[self.headings["h2"][-1]][-1].append(self._text)
        self._open = None


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text())
    return parser


def rows_by_first_cell(table: list[list[str]]) -> dict[str, list[str]]:
    """The rows under a table's header row, keyed by their first cell."""
    return {row[0]: row[1:] for row in table[1:]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two short runs, differing only in loss.beta, each evaluated after every step."""
    root = tmp_path_factory.mktemp("report")
    ws = toy_workspace(root / "ws")
    out = {}
    for name, beta in (("low_beta", 0.1), ("high_beta", 0.5)):
        opts = {"loss.beta": beta, "train.max_steps": 2, "train.eval_steps": 1, "log.report": True}
        runner.train(toy_config(ws, root / name, **opts))
        out[name] = root / name
    return out


def test_training_run_writes_report_with_plots_settings_and_data(runs) -> None:
    page_path = runs["low_beta"] / "report.html"
    page = parse_page(page_path)
    assert page.title == "preftune report: low_beta"
    assert page.headings["h2"] == ["Runs", "Final metrics", "Curves", "Settings", "Data"]
    assert page.headings["h3"] == SECTION_TITLES  # eval data present, nll off: no NLL panel but every section
    assert len(page.images) == len(SECTION_TITLES)
    for src in page.images:
        image = runs["low_beta"] / src  # relative to the page
        assert image.is_file() and image.read_bytes()[:8] == PNG_MAGIC, src
    assert "script" not in page.tags

    settings = rows_by_first_cell(page.tables["Settings"])
    assert settings.keys() == set(config_keys())  # one run: every setting
    assert settings["loss.beta"] == ["0.1"] and settings["train.max_steps"] == ["2"]
    assert settings["log.report"] == ["true"] and settings["ref.name_or_path"] == ["null"]

    final = rows_by_first_cell(page.tables["Final metrics"])
    metrics = read_jsonl(runs["low_beta"] / "metrics.jsonl")
    last_eval = [r for r in metrics if "eval/loss" in r][-1]
    assert final["last training step"] == ["2"] and final["pairs consumed"] == ["16"]
    assert final["loss (held-out, last evaluation)"] == [f"{last_eval['eval/loss']:.4g}"]
    assert "nll (training, last logged step)" not in final

    data = page.tables["Data"][1:]  # after the header
    assert [row[:4] for row in data] == [["low_beta", "train", "48", "48"], ["low_beta", "eval", "16", "16"]]


@pytest.mark.slow
def test_report_command_overlays_runs_and_lists_differing_settings(runs, tmp_path) -> None:
    for name, folder in runs.items():  # copies, so the default output does not replace the runs' own pages
        (tmp_path / name).mkdir()
        for file in ("metrics.jsonl", "config.yaml", "data_report.json"):
            shutil.copy(folder / file, tmp_path / name / file)
    result = run_cli("report", str(tmp_path / "low_beta"), str(tmp_path / "high_beta"))
    assert result.returncode == 0, result.stderr[-3000:]
    page_path = tmp_path / "low_beta" / "report.html"  # default: the first run's folder
    assert f"report: {page_path}" in result.stdout
    page = parse_page(page_path)
    assert page.title == "preftune report: low_beta, high_beta"
    settings = page.tables["Settings that differ between the runs"]
    assert settings[0] == ["setting", "low_beta", "high_beta"]
    assert rows_by_first_cell(settings) == {
        "output_dir": [str(runs["low_beta"]), str(runs["high_beta"])],
        "loss.beta": ["0.1", "0.5"],
    }
    assert page.tables["Final metrics"][0] == ["", "low_beta", "high_beta"]
    assert all((page_path.parent / src).read_bytes()[:8] == PNG_MAGIC for src in page.images)


def test_plots_overlay_runs_with_training_and_held_out_in_one_panel(runs, tmp_path, monkeypatch) -> None:
    figures: list[Figure] = []

    class RecordingFigure(Figure):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            figures.append(self)

    monkeypatch.setattr(report, "figure_class", lambda purpose: RecordingFigure)
    page = report.write_run_report([runs["low_beta"], runs["high_beta"]], tmp_path / "both.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["both.html", *(f"both-{s}.png" for s in ("loss", "preference", "rewards", "logps", "optimizer"))]
    )
    assert page == tmp_path / "both.html"
    loss_axes, optimizer_lr = figures[0].axes[0], figures[-1].axes[0]
    lines = {line.get_label(): line for line in loss_axes.get_lines()}
    assert list(lines) == [
        "low_beta training",
        "low_beta held-out",
        "high_beta training",
        "high_beta held-out",
    ]
    assert lines["low_beta training"].get_color() == lines["low_beta held-out"].get_color()
    assert lines["low_beta training"].get_color() != lines["high_beta training"].get_color()
    rows = read_jsonl(runs["high_beta"] / "metrics.jsonl")
    evals = [(r["step"], r["eval/loss"]) for r in rows if "eval/loss" in r]
    assert list(zip(*lines["high_beta held-out"].get_data(), strict=True)) == evals
    # the learning rate is logged for training steps only
    assert [line.get_label() for line in optimizer_lr.get_lines()] == [
        "low_beta training",
        "high_beta training",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("what", ["missing", "no_metrics"])
def test_report_of_a_folder_that_is_not_a_run_is_one_line_exit_2(what, tmp_path) -> None:
    folder = tmp_path / "run"
    if what == "no_metrics":
        folder.mkdir()
        (folder / "config.yaml").write_text("seed: 1\n")
    result = run_cli("report", str(folder))
    assert result.returncode == 2
    needle = "does not exist" if what == "missing" else "has no metrics.jsonl"
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("preftune: error: ") and str(folder) in result.stderr
    assert needle in result.stderr


@pytest.mark.slow
def test_report_help_and_arguments(runs, tmp_path) -> None:
    result = run_cli("report", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: preftune report RUN [RUN ...]")
    assert "report" in run_cli("--help").stdout.split("commands:")[1]
    assert cli.run(["report", str(runs["high_beta"]), f"--output={tmp_path / 'x' / 'page.html'}"]) == 0
    assert (tmp_path / "x" / "page.html").is_file() and (tmp_path / "x" / "page-loss.png").is_file()
    with pytest.raises(ConfigError, match="give at least one run folder"):
        cli.run(["report"])
    with pytest.raises(ConfigError, match="unknown option --out for report"):
        cli.run(["report", str(runs["high_beta"]), "--out", "x.html"])


def test_metrics_with_a_cut_last_line_are_read_and_a_bad_middle_line_is_named(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    good = json.dumps({"step": 1, "loss": 0.69})
    path.write_text(f'{good}\n{{"step": 2, "lo')  # a run killed while writing step 2
    assert run_record.read_metrics(path) == [{"step": 1, "loss": 0.69}]
    path.write_text(f"{good}\nnot json\n{good}\n")
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not a JSON line"):
        run_record.read_metrics(path)


def test_a_non_numeric_metric_is_named_not_a_crash(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        json.dumps({"step": 1, "loss": 0.69}) + "\n" + json.dumps({"step": 2, "loss": "high"}) + "\n"
    )
    with pytest.raises(DataError, match=r"metrics.jsonl:2: loss is 'high'; every metrics value is a number"):
        run_record.read_metrics(path)
    path.write_text(json.dumps({"step": 1, "loss": float("nan"), "grad_norm": float("inf")}) + "\n")
    assert len(run_record.read_metrics(path)) == 1  # a diverged run's NaN and inf are numbers


def test_the_data_table_escapes_what_data_report_json_holds(runs, tmp_path) -> None:
    folder = shutil.copytree(runs["low_beta"], tmp_path / "run")
    script = "<script>alert(1)</script>"
    hostile = {"train": {"rows_read": script, "kept": script, "truncated": script, "dropped": {script: 1}}}
    (folder / "data_report.json").write_text(json.dumps(hostile))
    page = report.write_run_report([folder], tmp_path / "page.html").read_text()
    assert "<script" not in page and page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 4


def _without_matplotlib(monkeypatch) -> None:
    # None in sys.modules makes an import fail as if the package were not installed; matplotlib.figure is
    # already imported in this process, so it is hidden too.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)


def test_report_without_matplotlib_is_a_one_line_refusal(runs, monkeypatch) -> None:
    _without_matplotlib(monkeypatch)
    with pytest.raises(ConfigError) as refused:
        report.write_run_report([runs["low_beta"]], runs["low_beta"] / "never.html")
    assert str(refused.value) == "the run report needs matplotlib: pip install 'preftune[demo]'"
    assert not (runs["low_beta"] / "never.html").exists()


@pytest.mark.parametrize("report_on", [True, False])
def test_training_without_matplotlib_succeeds_and_says_the_report_was_skipped(
    report_on, tmp_path, monkeypatch
) -> None:
    ws = toy_workspace(tmp_path / "ws", n_train=8, n_eval=0)
    _without_matplotlib(monkeypatch)
    lines: list[str] = []
    cfg = toy_config(ws, tmp_path / "run", **{"train.max_steps": 1, "data.eval": [], "log.report": report_on})
    final = runner.train(cfg, log=lines.append)
    assert (final / "model.safetensors").is_file()
    assert not (tmp_path / "run" / "report.html").exists()
    skipped = [line for line in lines if line.startswith("report")]
    if report_on:
        assert skipped == [
            "report.html skipped: the run report needs matplotlib: pip install 'preftune[demo]' "
            "(--log.report false silences this)"
        ]
    else:
        assert skipped == []
