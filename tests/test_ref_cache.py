"""The reference log-prob cache's parts: content hashes, the file format, the cached reference, the scoring pass."""

from __future__ import annotations

import copy
import math
import random
from pathlib import Path

import pytest
import torch

from preftune.config import ConfigError
from preftune.data import Row
from preftune.layouts import build_layout
from preftune.model.scorer import SequenceScorer
from preftune.reference.cache import (
    CachedReference,
    CacheUnusable,
    RefTable,
    cache_key,
    cache_path,
    read_cache,
    reference_fingerprint,
    rows_fingerprint,
    write_cache,
)
from preftune.reference.precompute import (
    PrecomputeSetup,
    check_resume,
    number_rows,
    precompute_reference,
    score_split,
)
from preftune.reference.sources import ModelReference, freeze
from preftune.strategy import SingleProcessStrategy
from preftune.toy import build_toy_model
from toy_env import reference_pairs

VOCAB = 64


def _ids(rng: random.Random, lo: int, hi: int) -> list[int]:
    return [rng.randrange(3, VOCAB) for _ in range(rng.randint(lo, hi))]


def random_pairs(n: int, seed: int) -> list[Row]:
    rng = random.Random(seed)
    pairs = [Row.pair([1, *_ids(rng, 1, 9)], _ids(rng, 1, 7), _ids(rng, 1, 7), "random", i) for i in range(n)]
    number_rows(pairs, [])
    return pairs


def random_groups(n: int, seed: int) -> list[Row]:
    """Prompt groups of 2 to 5 responses (scores are never read by a reference)."""
    rng = random.Random(seed)
    groups = []
    for i in range(n):
        prompt, k = [1, *_ids(rng, 1, 9)], rng.randint(2, 5)
        groups.append(Row(prompt, [_ids(rng, 1, 7) for _ in range(k)], [0.0] * k, "random", i))
    number_rows(groups, [])
    return groups


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_toy_model(VOCAB, hidden_size=32, seed=3)


# ---------------------------------------------------------------- keys


def test_reference_fingerprint_follows_content_not_identity(model) -> None:
    base = reference_fingerprint(model)
    twin = copy.deepcopy(model)
    assert reference_fingerprint(twin) == base  # another object, same weights: same key
    twin.config._name_or_path = "/elsewhere"  # where it was loaded from does not change its numbers
    assert reference_fingerprint(twin) == base
    with torch.no_grad():
        twin.model.layers[1].mlp.up_proj.weight[3, 5] += 1e-6  # one weight, one float ulp-ish nudge
    assert reference_fingerprint(twin) != base
    assert reference_fingerprint(copy.deepcopy(model).to(torch.bfloat16)) != base  # dtype counts
    rope = copy.deepcopy(model)
    rope.config.rms_norm_eps = 1e-5  # same weights, a config value that changes the outputs
    assert reference_fingerprint(rope) != base


def test_tied_weights_are_keyed_with_their_tying() -> None:
    tied = build_toy_model(VOCAB, hidden_size=32, seed=3, tie_word_embeddings=True)
    assert tied.lm_head.weight.data_ptr() == tied.model.embed_tokens.weight.data_ptr()
    untied = build_toy_model(VOCAB, hidden_size=32, seed=3, tie_word_embeddings=False)
    with torch.no_grad():
        untied.lm_head.weight.copy_(untied.model.embed_tokens.weight)
    # Equal numbers, but one ties and the other does not (it may later train them apart): different keys.
    assert reference_fingerprint(tied) != reference_fingerprint(untied)
    base = reference_fingerprint(tied)
    with torch.no_grad():
        tied.lm_head.weight[0, 0] += 1.0  # the shared storage: the embedding changes with it
    assert reference_fingerprint(tied) != base


def test_pairs_fingerprint_sees_every_token_and_boundary() -> None:
    pairs = random_pairs(20, seed=1)
    base = rows_fingerprint(pairs)
    assert rows_fingerprint(copy.deepcopy(pairs)) == base
    changed = copy.deepcopy(pairs)
    changed[13].rejected_ids[-1] += 1
    assert rows_fingerprint(changed) != base
    # The same token streams with the prompt/response boundary one token later score other tokens.
    early = [Row.pair([1, 7], [8, 9], [8, 10], "s", 0)]
    late = [Row.pair([1, 7, 8], [9], [10], "s", 0)]
    assert rows_fingerprint(early) != rows_fingerprint(late)
    assert rows_fingerprint(pairs[::-1]) != base  # order is the table's index
    keys = {cache_key("r", "c", base), cache_key("r2", "c", base), cache_key("r", "c2", base)}
    assert len(keys) == 3


def test_groups_fingerprint_sees_every_response_but_not_scores() -> None:
    groups = random_groups(12, seed=1)
    base = rows_fingerprint(groups)
    changed = copy.deepcopy(groups)
    changed[7].responses[-1][0] += 1  # one token of a group's last response
    assert rows_fingerprint(changed) != base
    swapped = copy.deepcopy(groups)
    swapped[3].responses.reverse()  # the same responses in another order fill other slots
    assert rows_fingerprint(swapped) != base
    moved = copy.deepcopy(groups)  # a response moved to the next group: the same token streams
    moved[1].responses.append(moved[0].responses.pop())
    assert len(moved[0].responses) >= 1 and rows_fingerprint(moved) != base
    rescored = copy.deepcopy(groups)
    rescored[5].scores[0] = 9.0  # scores never change a reference log-prob: the same key
    assert rows_fingerprint(rescored) == base
    # A pair is the group [chosen, rejected]: one key, so a pair run's cache serves a group run of its rows.
    pair = Row.pair([1, 7], [8, 9], [10], "s", 0)
    assert rows_fingerprint([pair]) == rows_fingerprint([Row([1, 7], [[8, 9], [10]], [1, 0], "s", 0)])


def test_cache_key_changes_with_ld_alpha_and_not_without_it() -> None:
    plain = cache_key("r", "c", "d")
    assert cache_key("r", "c", "d", None) == plain  # caches written before loss.ld_alpha existed stay valid
    assert len({plain, cache_key("r", "c", "d", 0.5), cache_key("r", "c", "d", 0.25)}) == 3


def test_precomputed_reference_is_keyed_by_the_layouts_ld_alpha(model, tmp_path: Path) -> None:
    """A cache of plain sums is never read back as LD-DPO sums: the second run computes its own table."""
    pairs, strategy, logs = random_pairs(6, seed=6), SingleProcessStrategy("cpu"), []
    tables = {}
    for alpha in (None, 0.5, None):
        layout = build_layout("padded", pad_token_id=0, ld_alpha=alpha)
        live = ModelReference(freeze(SequenceScorer(copy.deepcopy(model))))
        setup = PrecomputeSetup({"train": pairs}, layout, "fp32", 4, progress=False)
        cached = precompute_reference(model, lambda live=live: live, strategy, setup, tmp_path, logs.append)
        batch = layout.collate(pairs)
        torch.testing.assert_close(
            reference_pairs(cached, batch).rejected_logps, reference_pairs(live, batch).rejected_logps
        )
        tables[alpha] = cached.state_for_checkpoint()
    assert tables[0.5]["ld_alpha"] == "0.5" and "ld_alpha" not in tables[None]
    assert tables[0.5]["train_key"] != tables[None]["train_key"]
    passes = ["reused" if "reusing cache" in line else "computed" for line in logs if " train rows" in line]
    assert passes == ["computed", "computed", "reused"]  # the third run finds the first one's table
    with pytest.raises(ConfigError, match=r"loss\.ld_alpha \(the reference sums it weighs\) changed"):
        check_resume(tables[None], tables[0.5], Path("ckpt"))


# ---------------------------------------------------------------- file format


def _table(widths: list[int]) -> RefTable:
    table = RefTable.empty(widths)
    gen = torch.Generator().manual_seed(0)
    r = table.values.shape[1]
    table.values[0] = torch.randn(r, generator=gen, dtype=torch.float64).float().double()
    table.values[1] = torch.randint(1, 9, (r,), generator=gen).double()
    return table


@pytest.mark.parametrize("widths", [[2] * 37, [2, 5, 3, 2, 4], []], ids=["pairs", "groups", "empty"])
def test_cache_file_round_trips_exactly(tmp_path, widths) -> None:
    table = _table(widths)
    path = cache_path(tmp_path / "cache", "train", "k" * 64)
    write_cache(path, table, {"key": "k" * 64, "split": "train"})
    back = read_cache(path, "k" * 64, "train", widths)
    assert torch.equal(back.values, table.values) and back.dtype == torch.float32
    assert torch.equal(back.offsets, table.offsets)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(raw[:-9])
    elif how == "flipped":
        raw[-20] ^= 0x10
        path.write_bytes(bytes(raw))
    elif how == "header":
        path.write_bytes(raw[:25] + b"#" + raw[26:])
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("truncated", "truncated"),
        ("flipped", "checksum"),
        ("header", "header is damaged"),
        ("empty", "not a preftune"),
    ],
)
def test_damaged_cache_file_is_detected(tmp_path, how, reason) -> None:
    path = tmp_path / "c.refcache"
    write_cache(path, _table([2, 3, 4, 2, 2]), {"key": "abc", "split": "eval"})
    _damage(path, how)
    with pytest.raises(CacheUnusable, match=reason):
        read_cache(path, "abc", "eval", [2, 3, 4, 2, 2])


def test_cache_for_another_key_split_or_size_is_refused(tmp_path) -> None:
    path = tmp_path / "c.refcache"
    write_cache(path, _table([2] * 10), {"key": "abc", "split": "eval"})
    for key, split, widths, field in (
        ("abd", "eval", [2] * 10, "key"),
        ("abc", "train", [2] * 10, "split"),
        ("abc", "eval", [2] * 11, "rows"),
        ("abc", "eval", [2] * 9 + [3], "responses"),
    ):
        with pytest.raises(CacheUnusable, match=f"header has {field}"):
            read_cache(path, key, split, widths)
    # As many rows and responses, split otherwise between the rows: the stored offsets say so.
    with pytest.raises(CacheUnusable, match="other numbers of responses"):
        read_cache(path, "abc", "eval", [3, 1] + [2] * 8)


# ---------------------------------------------------------------- the cached reference against the live one


class CountingStrategy(SingleProcessStrategy):
    """One process pretending to be ``rank`` of ``world_size``: sums stay the identity, and a max over the group
    answers what the busiest peer would report (``group_max``), as the real collective would."""

    def __init__(self, rank: int, world_size: int, group_max: dict[str, float] | None = None) -> None:
        super().__init__("cpu")
        self.rank, self.world_size = rank, world_size
        self.group_max = group_max or {}

    def all_reduce(self, values: dict[str, float], op: str = "sum") -> dict[str, float]:
        if op == "max":
            return {key: max(value, self.group_max.get(key, value)) for key, value in values.items()}
        return super().all_reduce(values, op)


@pytest.mark.equivalence
@pytest.mark.parametrize("ld_alpha", [None, 0.5])
@pytest.mark.parametrize("layout_name", ["padded", "packed", "prefix_shared"])
def test_cached_reference_equals_model_reference_on_random_batches(model, layout_name, ld_alpha) -> None:
    pairs = random_pairs(29, seed=2)
    layout = build_layout(layout_name, pad_token_id=0, ld_alpha=ld_alpha)
    live = ModelReference(freeze(SequenceScorer(copy.deepcopy(model), chunk_size=7)))
    # The table is scored in batches of 5 in order, the checks below in other, shuffled batches.
    table = score_split(pairs, live, layout, SingleProcessStrategy("cpu"), 5, False, "test")
    alone = reference_pairs(live, layout.collate(pairs[:1]))  # a pair's row is its chosen, then its rejected
    torch.testing.assert_close(
        table.values[0, :2].float(), torch.cat([alone.chosen_logps, alone.rejected_logps])
    )
    cached = CachedReference(table, {"train_key": "x"})
    rng = random.Random(0)
    for size in (1, 3, 8):
        chosen = rng.sample(pairs, size)
        batch = layout.collate(chosen)
        want, got = reference_pairs(live, batch), reference_pairs(cached, batch)
        for name in ("chosen_logps", "rejected_logps", "chosen_tokens", "rejected_tokens"):
            w, g = getattr(want, name), getattr(got, name)
            assert g.dtype == w.dtype
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=name)
    assert cached.state_for_checkpoint() == {"train_key": "x"}


def test_cached_reference_refuses_batches_it_cannot_place(model) -> None:
    pairs = random_pairs(6, seed=4)
    layout = build_layout("padded", pad_token_id=0)
    live = ModelReference(freeze(SequenceScorer(copy.deepcopy(model))))
    cached = CachedReference(
        score_split(pairs, live, layout, SingleProcessStrategy("cpu"), 4, False, "t"), {}
    )
    unnumbered = copy.deepcopy(pairs[:2])
    for pair in unnumbered:
        pair.row_id = -1
    with pytest.raises(ValueError, match="row_ids"):
        reference_pairs(cached, layout.collate(unnumbered))
    # Ids pointing at other pairs than the batch holds (here pair 0's tokens numbered as pair 1, whose
    # responses are longer) are caught by the response token counts.
    pairs[1].responses[0] = [*pairs[0].chosen_ids, 5]
    cached = CachedReference(
        score_split(pairs, live, layout, SingleProcessStrategy("cpu"), 4, False, "t"), {}
    )
    misplaced = copy.deepcopy(pairs[0])
    misplaced.row_id = 1
    with pytest.raises(RuntimeError, match="misaligned"):
        reference_pairs(cached, layout.collate([misplaced]))
    reference_pairs(cached, layout.collate(pairs[:2]))  # the same pairs, correctly numbered, pass


@pytest.mark.equivalence
@pytest.mark.parametrize("layout_name", ["padded", "packed", "prefix_shared"])
def test_cached_reference_equals_model_reference_on_random_groups(model, layout_name) -> None:
    groups = random_groups(23, seed=6)
    layout = build_layout(layout_name, pad_token_id=0)
    live = ModelReference(freeze(SequenceScorer(copy.deepcopy(model), chunk_size=7)))
    table = score_split(groups, live, layout, SingleProcessStrategy("cpu"), 4, False, "test")
    assert table.offsets.diff().tolist() == [len(g.responses) for g in groups]
    for i in range(3):  # row i's responses fill slots offsets[i]..offsets[i+1]-1 in the group's order
        alone = live.response_logps(layout.collate([groups[i]]))
        stored = table.values[:, table.offsets[i] : table.offsets[i + 1]]
        torch.testing.assert_close(stored[0].float(), alone.logps, rtol=1e-5, atol=1e-6)
    cached = CachedReference(table, {})
    rng = random.Random(1)
    for size in (1, 3, 7):
        batch = layout.collate(rng.sample(groups, size))
        want, got = live.response_logps(batch), cached.response_logps(batch)
        assert got.logps.dtype == want.logps.dtype and got.logps.shape == (batch.num_sequences,)
        torch.testing.assert_close(got.logps, want.logps, rtol=1e-5, atol=1e-6)
        assert torch.equal(got.tokens, want.tokens)


def test_cached_reference_refuses_misaligned_groups(model) -> None:
    prompt, three = [1, 5, 6], [[7, 8], [9], [10, 11, 12]]
    groups = [
        Row(prompt, three, [2, 1, 0], "s", 0),
        Row(prompt, [*three[:2], [10, 11, 12, 13]], [2, 1, 0], "s", 1),  # last response 1 longer
        Row(prompt, [*three, [14]], [3, 2, 1, 0], "s", 2),  # one response more
    ]
    number_rows(groups, [])
    layout = build_layout("padded", pad_token_id=0)
    live = ModelReference(freeze(SequenceScorer(copy.deepcopy(model))))
    cached = CachedReference(
        score_split(groups, live, layout, SingleProcessStrategy("cpu"), 2, False, "t"), {}
    )
    misplaced = copy.deepcopy(groups[0])
    misplaced.row_id = -1
    with pytest.raises(ValueError, match="row_ids"):
        cached.response_logps(layout.collate([misplaced]))
    misplaced.row_id = 2
    with pytest.raises(RuntimeError, match=r"response counts .* misaligned"):
        cached.response_logps(layout.collate([misplaced]))
    misplaced.row_id = 1
    with pytest.raises(RuntimeError, match=r"token counts .* misaligned"):
        cached.response_logps(layout.collate([misplaced]))
    cached.response_logps(layout.collate(groups[::-1]))  # correctly numbered groups pass, in any order


@pytest.mark.parametrize(("n", "micro", "world"), [(15, 1, 2), (7, 3, 2), (1, 2, 2), (10, 4, 3)])
@pytest.mark.parametrize("kind", ["pairs", "groups"])
def test_every_rank_runs_the_same_number_of_forwards(model, n, micro, world, kind) -> None:
    rows = random_pairs(n, seed=5) if kind == "pairs" else random_groups(n, seed=5)
    layout = build_layout("padded", pad_token_id=0)
    live = ModelReference(freeze(SequenceScorer(copy.deepcopy(model))))
    full = score_split(rows, live, layout, SingleProcessStrategy("cpu"), micro, False, "t")
    calls = []
    real = live.response_logps
    live.response_logps = lambda batch: calls.append(batch.num_rows) or real(batch)  # type: ignore[method-assign]
    summed = torch.zeros_like(full.values)
    expected_forwards = math.ceil(math.ceil(n / world) / micro)
    busiest = {"batches": float(max(math.ceil(len(range(r, n, world)) / micro) for r in range(world)))}
    for rank in range(world):
        calls.clear()
        shard = score_split(rows, live, layout, CountingStrategy(rank, world, busiest), micro, False, "t")
        assert len(calls) == expected_forwards, rank
        summed += shard.values  # what the sum over processes adds up
    torch.testing.assert_close(summed, full.values, rtol=1e-5, atol=1e-6)


def test_resume_check_names_what_changed() -> None:
    saved = {"reference": "r1", "compute": "c", "train_data": "d", "train_key": cache_key("r1", "c", "d")}
    check_resume(saved, dict(saved), Path("ckpt"))  # the same key resumes
    check_resume({}, saved, Path("ckpt"))  # a checkpoint trained against a live reference resumes too
    moved = {**saved, "reference": "r2", "train_key": cache_key("r2", "c", "d")}
    with pytest.raises(
        ConfigError, match=r"ckpt\.resume: ckpt .*: the reference weights or model config changed"
    ):
        check_resume(saved, moved, Path("ckpt"))
