"""bench/vs_trl.py runs end to end (preftune side only, tiny model: no TRL environment needed) and its
workload gives preftune exactly the ids the benchmark counts tokens and FLOPs on."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from preftune.config import load_config
from preftune.data import load_rows
from preftune.layouts import LAYOUTS
from preftune.model.loading import load_tokenizer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import responses  # noqa: E402
import vs_trl  # noqa: E402
import workload as wl  # noqa: E402

STEPS = 2  # one timed step after the first: the least that exercises every column
QUICK = dataclasses.replace(wl.QUICK, pairs=STEPS * 8)  # what `--quick --steps 2` builds


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


@pytest.mark.slow
def test_vs_trl_quick_runs_every_preftune_layout_end_to_end(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process orchestrator (saves an interpreter start); each configuration still runs as a worker process.
    argv = [
        "--quick",
        "--configs",
        "preftune",
        "--steps",
        str(STEPS),
        "--repeats",
        "1",
        "--workdir",
        str(workdir),
    ]
    code = vs_trl.main(argv)
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    rows = [ln for ln in out.splitlines() if ln.startswith("| preftune-")]
    names = [r.split("|")[1].strip() for r in rows]
    # every layout, then the reference cache on padded and on the fastest layout (named once it is known).
    # On the tiny quick model padded can come out fastest; its cache run is then not repeated.
    assert names[: len(LAYOUTS)] == [f"preftune-{name}" for name in LAYOUTS]
    cache_runs = names[len(LAYOUTS) :]
    assert cache_runs[0] == "preftune-padded+cache"
    assert len(cache_runs) in (1, 2) and all(name.endswith("+cache") for name in cache_runs)
    assert "preftune-padded+cache" not in cache_runs[1:]
    assert not any("trl-" in ln for ln in out.splitlines() if ln.startswith("|"))
    for name in LAYOUTS:
        assert f"  preftune-{name}: ok (" in out
    results = json.loads((workdir / "quick" / "results.json").read_text())
    for runs in results.values():
        (run,) = runs
        assert run["steps"] == STEPS and len(run["step_s"]) == STEPS - 1 and run["median_step_s"] > 0
        assert run["peak_rss_mib"] > 50 and run["threads"] == 2 and run["allocator_settings"] is True
        assert abs(run["first_steps"][0]["loss"] - 0.693147) < 1e-5  # policy == reference: ln 2


def test_workload_ids_are_what_preftune_trains_on(workdir: Path) -> None:
    model_dir, data = wl.build(workdir / "quick", QUICK)
    cfg = load_config(
        None, {"model.name_or_path": str(model_dir), "data.train": str(data), "data.shuffle": False}
    )
    pairs, _ = load_rows(cfg.data, load_tokenizer(str(model_dir)), "train", cfg.seed)
    expected = wl.expected_ids(model_dir, data, QUICK.pairs)
    assert [(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs] == expected
    lo, hi = QUICK.prompt_tokens
    assert all(lo <= len(p) <= hi and p[0] == 1 for p, _, _ in expected)
    lo, hi = QUICK.response_tokens
    assert all(lo <= len(c) <= hi and c[-1] == 2 and r[-1] == 2 for _, c, r in expected)


def test_step_flops_match_the_closed_form() -> None:
    work = wl.Workload(8, 2, 16, 2, 100, (2, 2), (3, 3), pairs=1)
    pair = ([1, 5], [6, 7, 2], [8, 9, 2])
    policy, ref = wl.step_flops(work, [pair])
    decoder = 2 * (4 * 8 * 8 + 3 * 8 * 16)  # 1280 matmul parameters
    per_sequence = 2 * decoder * 5 + 2 * 2 * 5 * 5 * 8 + 2 * 8 * 100 * 3  # 12800 + 800 + 4800
    assert ref == 2 * per_sequence == 36800
    assert policy == 3 * ref


@pytest.mark.slow
def test_vs_trl_responses_workload_trains_the_expanded_comparisons(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--responses 4: preftune trains one row per prompt; the ids it trains on, expanded to pairs by the bench's
    own rule, are the ids TRL would get from the expanded jsonl (the digest check), for both pair rules."""
    argv = ["--quick", "--responses", "4", "--configs", "preftune-all,preftune-best_vs_rest", "--steps",
            str(STEPS), "--repeats", "1", "--workdir", str(workdir)]  # fmt: skip
    code = vs_trl.main(argv)
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "  preftune-all: ok (" in out and "  preftune-best_vs_rest: ok (" in out
    rows = {
        ln.split("|")[1].strip(): ln.split("|") for ln in out.splitlines() if ln.startswith("| preftune-")
    }
    assert sorted(rows) == ["preftune-all", "preftune-best_vs_rest"]
    # 2 prompts a step: 12 comparisons for all pairs of 4 responses, 6 for the best against the rest.
    assert [rows["preftune-all"][2].strip(), rows["preftune-all"][3].strip()] == ["2", "12"]
    assert rows["preftune-best_vs_rest"][3].strip() == "6"
    results = json.loads((workdir / "quick-k4" / "results.json").read_text())
    for name, (run,) in results.items():
        assert run["steps"] == STEPS and abs(run["first_steps"][0]["loss"] - 0.693147) < 1e-5, name
        assert run["first_steps"][0]["rewards/chosen"] == 0.0  # policy == reference at step 1


def test_responses_expansion_counts_and_orders_pairs() -> None:
    scores = [1.0, 3.0, 2.0, 0.0]
    assert responses.expand(list("abcd"), scores, "all") == [
        ("b", "c"), ("b", "a"), ("b", "d"), ("c", "a"), ("c", "d"), ("a", "d")
    ]  # fmt: skip
    assert responses.expand(list("abcd"), scores, "best_vs_rest") == [("b", "c"), ("b", "a"), ("b", "d")]
    # A tie is no pair: TRL gets no row for it, and preftune's loss.pairs skips it too.
    assert responses.expand(list("abc"), [2.0, 2.0, 1.0], "all") == [("a", "c"), ("b", "c")]
    assert responses.pairs_per_prompt(4, "all") == 6 and responses.pairs_per_prompt(4, "best_vs_rest") == 3


@pytest.mark.slow
def test_data_scale_quick_runs_preftune_end_to_end(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import data_scale

    code = data_scale.main(
        ["--quick", "--configs", "preftune,preftune-rerun", "--workdir", str(workdir / "data")]
    )
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    results = json.loads((workdir / "data" / "quick" / "results.json").read_text())
    assert sorted(results) == ["preftune-rerun@2000", "preftune@2000"]
    for (run,) in results.values():
        # 2000 rows of 40-200 + 2 x 30-200 words: none is dropped, and each word is at least one token.
        assert run["rows"] == 2000 and run["tokens"] > 2000 * (40 + 30 + 30)
        assert run["prepare_s"] > 0 and run["peak_rss_mib"] > 50 and run["allocator_settings"] is True
        assert run["first_batch_rows"] == 8 and run["store_mib"] > 2000 * 100 * 4 / 2**20
    # The rerun maps the store the first run built (same file, tokenizer and settings).
    assert not results["preftune@2000"][0]["reused"] and results["preftune-rerun@2000"][0]["reused"]
