"""train.micro_batch_tokens: micro-batches cut by a token budget train exactly what the split by count trains
(pairs and prompt groups, 1 and 2 processes, resumed), and each layout says what its tokens are."""

from __future__ import annotations

import pytest

from launch import TORCHRUN, launch, train_args
from preftune import DPOTrainer
from preftune.config import ConfigError, load_config
from preftune.layouts import PackedLayout, PaddedLayout, PrefixSharedLayout
from preftune.training import runner
from preftune.training.budget import TokenBudgetSteps, balanced_split, greedy_parts
from test_deepspeed import needs_deepspeed
from toy_env import (
    assert_close_weights,
    assert_same_metrics,
    fit_recording_grads,
    id_pair,
    load_weights,
    logged_metrics,
    toy_config,
)

# Rows of the toy data lay out 30 to 35 tokens each (prefix_shared): 100 tokens hold two or three of them.
RUN = {
    "train.max_steps": 4, "train.batch_size": 8, "train.micro_batch_size": 4, "ckpt.save_steps": 2,
    "data.shuffle": True, "optim.adam_eps": 1e-3, "train.eval_steps": 2,
}  # fmt: skip
BUDGET = {"train.micro_batch_tokens": 100}


WORKSPACE = {
    "n_train": 64,
    "n_eval": 13,
    "groups": True,
}  # the sizes of this module's `ws` (tests/conftest.py)


@pytest.fixture(scope="module")
def count_run(ws, tmp_path_factory):
    out = tmp_path_factory.mktemp("count")
    return out, fit_recording_grads(toy_config(ws, out, **RUN))[1]


def _sizes(cfg) -> list[list[int]]:
    """Rows per micro-batch of each step a run's loader makes."""
    trainer, _ = runner.build_trainer(cfg, log=lambda *_: None)
    return [[batch.num_rows for batch in step] for step in trainer.train_dataloader]


# ---------------------------------------------------------------- the split


def test_greedy_and_balanced_splits_in_closed_form() -> None:
    tokens = sum  # a row is its token count here
    assert greedy_parts([4, 3, 5, 9, 2], tokens, 8, 3) == [[4, 3], [5], [9], [2]]  # 9 is over: alone
    assert greedy_parts([1, 1, 1, 1], tokens, 8, 3) == [[1, 1, 1], [1]]  # at most 3 rows
    assert balanced_split([6, 2, 2, 6], tokens, 10, 3) == [[6, 2], [2, 6]]  # greedy: [6, 2, 2], [6]
    # More parts than the budget needs (another process needs them): the largest shrink.
    assert balanced_split([6, 2, 2, 6], tokens, 10, 3, parts=3) == [[6], [2, 2], [6]]
    assert balanced_split([5, 5, 5, 5], tokens, 10, 4, parts=3) == [[5], [5], [5, 5]]
    with pytest.raises(ValueError, match="cannot split 2 rows into 3"):
        balanced_split([1, 1], tokens, 10, 3, parts=3)


class _Busier:
    """A strategy whose other process needs ``most`` micro-batches this step."""

    def __init__(self, most: int) -> None:
        self.most = most

    def all_reduce(self, values: dict[str, float], op: str = "sum") -> dict[str, float]:
        assert op == "max"
        return {key: max(value, self.most) for key, value in values.items()}


def test_every_process_runs_as_many_micro_batches_as_the_busiest() -> None:
    layout = PrefixSharedLayout()
    rows = [id_pair([1] * 4, [2] * 3, [3] * 3, index=i) for i in range(6)]  # 10 tokens each
    steps = [rows]  # one step of six rows; a list of step lists stands for the loader
    own = TokenBudgetSteps(steps, layout.collate, layout.laid_out_tokens, 30, 4, _Busier(1))
    assert [[b.num_rows for b in step] for step in own] == [[3, 3]]  # 30 tokens: three rows
    busier = TokenBudgetSteps(steps, layout.collate, layout.laid_out_tokens, 30, 4, _Busier(4))
    (step,) = list(busier)
    assert [b.num_rows for b in step] == [1, 1, 2, 2]  # the same six rows, in order
    assert [row for b in step for row in b.rows] == [(r.source, r.index) for r in rows]


def test_each_layout_counts_what_it_lays_out() -> None:
    # PaddedLayout's example: prompts [5, 6] / [7]; chosen [8] / [3, 2]; rejected [9, 2] / [4].
    pairs = [id_pair([5, 6], [8], [9, 2]), id_pair([7], [3, 2], [4])]
    assert PaddedLayout(0).laid_out_tokens(pairs) == 4 * 4  # four sequences, padded to the longest (4)
    assert PackedLayout().laid_out_tokens(pairs) == 12  # each sequence's own tokens
    assert PrefixSharedLayout().laid_out_tokens(pairs) == 5 + 4  # each prompt once, then its responses


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"train.micro_batch_tokens: must be >= 0"):
        load_config(None, {"train.micro_batch_tokens": -1})


# ---------------------------------------------------------------- one process: the same training


@pytest.mark.equivalence
def test_a_token_budget_trains_pairs_as_the_split_by_count(ws, count_run, tmp_path) -> None:
    cfg = toy_config(ws, tmp_path, **RUN, **BUDGET)
    sizes = _sizes(cfg)
    assert all(sum(step) == 8 and max(step) <= 4 for step in sizes)
    assert any(len(set(step)) > 1 for step in sizes), sizes  # uneven micro-batches, e.g. [3, 2, 3]
    count_out, count_grads = count_run
    grads = fit_recording_grads(cfg)[1]
    assert len(grads) == len(count_grads) == 4
    for got, want in zip(grads, count_grads, strict=True):
        assert_close_weights(got, want, rtol=1e-5, atol=1e-7)
    assert_same_metrics(count_out, tmp_path, atol=1e-6)  # losses, rewards, tokens; eval too
    assert_close_weights(load_weights(count_out / "final"), load_weights(tmp_path / "final"), 1e-5, 1e-6)


@pytest.mark.equivalence
@pytest.mark.parametrize(("layout", "budget"), [("prefix_shared", 170), ("padded", 300)])
def test_a_token_budget_trains_groups_as_the_split_by_count(ws, tmp_path, layout, budget) -> None:
    opts = {**RUN, "loss.pairs": "all", "train.layout": layout,
            "data.train": ws["group_train"], "data.eval": ws["group_eval"]}  # fmt: skip
    cfg = toy_config(ws, tmp_path / "budget", **opts, **{"train.micro_batch_tokens": budget})
    assert any(len(set(step)) > 1 for step in _sizes(cfg))
    runner.train(toy_config(ws, tmp_path / "count", **opts))
    runner.train(cfg)
    assert_same_metrics(tmp_path / "count", tmp_path / "budget", atol=1e-6)
    assert_close_weights(
        load_weights(tmp_path / "count" / "final"), load_weights(tmp_path / "budget" / "final"), 1e-5, 1e-6
    )


def test_a_row_over_the_budget_trains_alone_and_is_reported_once(ws, count_run, tmp_path) -> None:
    said: list[str] = []
    runner.train(toy_config(ws, tmp_path, **RUN, **{"train.micro_batch_tokens": 33}), log=said.append)
    over = [line for line in said if line.startswith("train.micro_batch_tokens")]
    assert len(over) == 1 and "lay out more than 33 tokens each (prefix_shared; the longest 35" in over[0]
    assert_same_metrics(count_run[0], tmp_path, atol=1e-6)


@pytest.mark.equivalence
def test_a_resumed_budget_run_continues_exactly(ws, tmp_path, monkeypatch) -> None:
    cfg = {**RUN, **BUDGET}
    runner.train(toy_config(ws, tmp_path / "full", **cfg))
    real_save = DPOTrainer.save_checkpoint

    def crash(self, args, consumed):
        path = real_save(self, args, consumed)
        if self.global_step == 2:
            raise KeyboardInterrupt("simulated stop")
        return path

    with monkeypatch.context() as patch:
        patch.setattr(DPOTrainer, "save_checkpoint", crash)
        with pytest.raises(KeyboardInterrupt):
            runner.train(toy_config(ws, tmp_path / "split", **cfg))
    runner.train(toy_config(ws, tmp_path / "split", **cfg))
    assert logged_metrics(tmp_path / "full") == logged_metrics(tmp_path / "split")
    assert_close_weights(
        load_weights(tmp_path / "full" / "final"), load_weights(tmp_path / "split" / "final"), 1e-6, 1e-6
    )


# ---------------------------------------------------------------- two processes


def test_the_budget_needs_more_micro_batches_on_one_process_than_another(ws, tmp_path) -> None:
    """What the two-process runs below rely on to test the max rule: their shards of a step differ in count."""
    trainer, _ = runner.build_trainer(toy_config(ws, tmp_path, **RUN, **{"train.micro_batch_tokens": 67}))
    steps: TokenBudgetSteps = trainer.train_dataloader
    counts = [
        [len(greedy_parts(rows[rank::2], steps.cost, 67, 4)) for rank in (0, 1)] for rows in steps.step_rows
    ]
    assert any(a != b for a, b in counts), counts


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "extra"),
    [
        ("ddp", {}),
        ("fsdp2", {}),
        pytest.param("deepspeed", {"strategy.zero_stage": 2}, marks=needs_deepspeed, id="deepspeed-zero2"),
        pytest.param("deepspeed", {"strategy.zero_stage": 3}, marks=needs_deepspeed, id="deepspeed-zero3"),
    ],
)
def test_two_processes_with_a_budget_train_as_one_by_count(ws, count_run, tmp_path, strategy, extra) -> None:
    launch(train_args(TORCHRUN, ws, tmp_path, strategy, {**RUN, "train.micro_batch_tokens": 67, **extra}))
    count_out = count_run[0]
    assert_same_metrics(count_out, tmp_path, atol=1e-6)
    assert_close_weights(load_weights(count_out / "final"), load_weights(tmp_path / "final"), 1e-5, 1e-6)
