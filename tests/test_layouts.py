"""The padding-free layouts (packed, prefix_shared) equal the padded layout: per-sequence log-probs, token
counts and every parameter gradient, on random pairs and on rows of K responses (K mixed in one micro-batch, up
to 16), for Llama- and Qwen2-style models (grouped-query attention: 4 query heads, 2 key/value heads)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from preftune.data import Row
from preftune.layouts import PackedLayout, PaddedLayout, PrefixSharedLayout, build_layout
from preftune.layouts.attention import enable_segment_attention, supports_segments
from preftune.layouts.plan import Segment, SegmentPlan
from preftune.model.responses import score_responses
from preftune.model.scorer import SequenceScorer
from preftune.toy import build_toy_model
from toy_env import id_pair, score_pairs


def test_packed_collate_matches_docstring_example() -> None:
    batch = PackedLayout(pad_token_id=0).collate([id_pair([5, 6], [8], [9, 2]), id_pair([7], [3, 2], [4])])
    assert batch.input_ids.tolist() == [[5, 6, 8, 7, 3, 2, 5, 6, 9, 2, 7, 4]]
    assert batch.position_ids is not None
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0, 1]]
    assert batch.attention_plan is not None
    assert [(s.start, s.end, s.has_prefix) for s in batch.attention_plan.segments] == [
        (0, 3, False), (3, 6, False), (6, 10, False), (10, 12, False),
    ]  # fmt: skip
    assert batch.score_targets.tolist() == [8, 3, 2, 9, 2, 4]
    assert batch.score_from.tolist() == [1, 3, 4, 7, 8, 10]
    assert batch.num_tokens == 12


def test_prefix_shared_collate_matches_docstring_example() -> None:
    batch = PrefixSharedLayout(pad_token_id=0).collate([id_pair([5, 6], [8], [9, 2])])
    assert batch.input_ids.tolist() == [[5, 6, 8, 9, 2]]
    assert batch.position_ids is not None and batch.position_ids.tolist() == [[0, 1, 2, 2, 3]]
    assert batch.attention_plan is not None
    assert batch.attention_plan.segments == [Segment(0, 3), Segment(3, 5, 0, 2)]
    assert batch.score_targets.tolist() == [8, 9, 2]
    assert batch.score_from.tolist() == [1, 1, 3]
    assert batch.score_sequence.tolist() == [0, 1, 1]
    assert batch.num_tokens == 3 + 4  # counted per sequence, as in the padded layout


def test_grid_masks_prefix_then_causal_and_maps_back() -> None:
    plan = SegmentPlan([Segment(0, 3), Segment(3, 5, 0, 2)])
    grid = plan.grid(torch.device("cpu"))
    assert (grid.segments, grid.queries, grid.keys) == (2, 3, 4)
    assert grid.query_index.view(2, 3).tolist() == [[0, 1, 2], [3, 4, 0]]  # padding cell -> position 0
    assert grid.key_index.view(2, 4).tolist() == [[0, 1, 2, 0], [0, 1, 3, 4]]
    assert grid.mask[0, 0].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]
    # the rejected segment sees the prompt (keys 0, 1), then itself causally; its padding query sees one key
    assert grid.mask[1, 0].int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert grid.back_index.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="tile"):
        SegmentPlan([Segment(0, 3), Segment(4, 5)])


def _random_pairs(seed: int, count: int) -> list[Row]:
    gen = torch.Generator().manual_seed(seed)

    def tokens(low: int, high: int) -> list[int]:
        n = int(torch.randint(low, high, (1,), generator=gen))
        return torch.randint(3, 97, (n,), generator=gen).tolist()

    return [id_pair(tokens(1, 12), tokens(1, 10), tokens(1, 10), index=i) for i in range(count)]


def _logps_and_grads(layout, arch: str, pairs, **model_kwargs):
    model = build_toy_model(97, arch=arch, seed=4, **model_kwargs)
    batch = layout.collate(pairs)
    out = score_pairs(SequenceScorer(model, chunk_size=5), batch, want_aux=arch == "mixtral")
    weights = torch.linspace(-1, 1, len(pairs))  # distinct upstream weights per sequence
    objective = (weights * out.chosen_logps).sum() - (weights.flip(0) * out.rejected_logps).sum()
    if out.aux_loss is not None:
        objective = objective + out.aux_loss
    objective.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}, batch


@pytest.mark.equivalence
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("layout_cls", [PackedLayout, PrefixSharedLayout])
def test_segment_layouts_equal_padded(layout_cls, arch: str, seed: int) -> None:
    pairs = _random_pairs(seed, count=5)
    ref_out, ref_grads, ref_batch = _logps_and_grads(PaddedLayout(0), arch, pairs)
    out, grads, batch = _logps_and_grads(layout_cls(0), arch, pairs)
    assert batch.input_ids.numel() < ref_batch.input_ids.numel()  # fewer positions computed
    assert batch.num_tokens == ref_batch.num_tokens
    torch.testing.assert_close(out.chosen_logps, ref_out.chosen_logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.rejected_logps, ref_out.rejected_logps, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.chosen_tokens, ref_out.chosen_tokens)
    assert torch.equal(out.rejected_tokens, ref_out.rejected_tokens)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.equivalence
def test_packed_moe_balancing_loss_equals_padded() -> None:
    """Packed sees each sequence's tokens once, as padded does with its 2-D mask, so the Mixtral router's
    balancing loss (and its gradients) agree too."""
    pairs = _random_pairs(5, count=4)
    ref_out, ref_grads, _ = _logps_and_grads(PaddedLayout(0), "mixtral", pairs)
    out, grads, _ = _logps_and_grads(PackedLayout(0), "mixtral", pairs)
    assert ref_out.aux_loss is not None and out.aux_loss is not None
    torch.testing.assert_close(out.aux_loss, ref_out.aux_loss, rtol=1e-5, atol=1e-6)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.equivalence
def test_prefix_shared_under_gradient_checkpointing() -> None:
    pairs = _random_pairs(3, count=3)
    _, ref_grads, _ = _logps_and_grads(PaddedLayout(0), "llama", pairs)
    model = build_toy_model(97, seed=4)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    layout = PrefixSharedLayout(0)
    out = score_pairs(SequenceScorer(model, chunk_size=5), layout.collate(pairs))
    weights = torch.linspace(-1, 1, len(pairs))
    ((weights * out.chosen_logps).sum() - (weights.flip(0) * out.rejected_logps).sum()).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_auto_picks_the_fastest_layout_the_model_supports() -> None:
    model = build_toy_model(97)
    assert supports_segments(model)
    assert model.config._attn_implementation == "sdpa"  # the probe leaves the model as it found it
    assert build_layout("auto", 0, model).name == "prefix_shared"
    assert build_layout("auto", 0, model, aux_loss=True).name == "packed"
    model = build_toy_model(97, attn_implementation="eager")
    assert supports_segments(model)


def test_auto_falls_back_to_padded_when_attention_ignores_the_plan() -> None:
    class OwnAttention(torch.nn.Module):  # model code that never consults transformers' attention interface
        def __init__(self) -> None:
            super().__init__()
            self.config = SimpleNamespace(_attn_implementation="sdpa", num_hidden_layers=1)
            self.embed = torch.nn.Embedding(10, 4)

        def get_decoder(self):
            return lambda **kw: self.embed(kw["input_ids"])

    assert not supports_segments(OwnAttention())
    assert build_layout("auto", 0, OwnAttention()).name == "padded"
    with pytest.raises(ValueError, match="unknown layout"):
        build_layout("ragged", 0)


def test_empty_prompt_is_refused_by_prefix_shared() -> None:
    with pytest.raises(ValueError, match="t row 0: empty prompt"):
        PrefixSharedLayout(0).collate([id_pair([], [4], [5])])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_calls_without_a_plan_keep_the_models_own_attention(attn: str) -> None:
    """Once segments are enabled, padded batches (with their padding mask) and generation are unchanged."""
    from preftune.model.generation import SamplingOptions, sample_responses
    from preftune.toy import build_toy_tokenizer, toy_corpus

    pairs = _random_pairs(9, count=4)
    plain = build_toy_model(97, seed=4, attn_implementation=attn)
    enabled = build_toy_model(97, seed=4, attn_implementation=attn)
    enable_segment_attention(enabled)
    assert enabled.config._attn_implementation == f"preftune_segments|{attn}"
    layout = PaddedLayout(0)
    batch = layout.collate(pairs)
    want = score_pairs(SequenceScorer(plain), batch)
    got = score_pairs(SequenceScorer(enabled), batch)
    torch.testing.assert_close(got.chosen_logps, want.chosen_logps, rtol=0, atol=0)
    torch.testing.assert_close(got.rejected_logps, want.rejected_logps, rtol=0, atol=0)
    tokenizer = build_toy_tokenizer(toy_corpus())
    opts = SamplingOptions(max_new_tokens=6, temperature=0)
    prompts = ["hello there", "a longer prompt to pad"]
    plain_big = build_toy_model(len(tokenizer), seed=1, attn_implementation=attn)
    enabled_big = build_toy_model(len(tokenizer), seed=1, attn_implementation=attn)
    enable_segment_attention(enabled_big)
    for a, b in zip(
        sample_responses(plain_big, tokenizer, prompts, options=opts),
        sample_responses(enabled_big, tokenizer, prompts, options=opts),
        strict=True,
    ):
        assert a[0].response_ids == b[0].response_ids


def test_a_plan_reaches_every_layer_through_fsdp2_input_casting() -> None:
    """FSDP2's mixed precision rebuilds dataclasses among forward inputs to cast them; the plan must pass
    through as the same object, or its call count and cached grid would be a copy's."""
    from torch.distributed.utils import _apply_to_tensors

    plan = SegmentPlan([Segment(0, 2)])
    args = _apply_to_tensors(lambda t: t.to(torch.bfloat16), (torch.ones(2), plan))
    assert args[1] is plan


# ---------------------------------------------------------------- rows of K responses


def _row(prompt: list[int], responses: list[list[int]], index: int = 0) -> Row:
    return Row(prompt, responses, [float(-k) for k in range(len(responses))], "t", index)


def _random_rows(seed: int, sizes: list[int]) -> list[Row]:
    gen = torch.Generator().manual_seed(seed)

    def tokens(low: int, high: int) -> list[int]:
        n = int(torch.randint(low, high, (1,), generator=gen))
        return torch.randint(3, 97, (n,), generator=gen).tolist()

    return [_row(tokens(1, 12), [tokens(1, 10) for _ in range(k)], i) for i, k in enumerate(sizes)]


def _row_logps_and_grads(layout, arch: str, rows: list[Row]):
    model = build_toy_model(97, arch=arch, seed=4)
    batch = layout.collate(rows)
    out = score_responses(SequenceScorer(model, chunk_size=5), batch)
    weights = torch.linspace(-1, 1, out.logps.numel())  # a distinct upstream weight per response
    (weights * out.logps).sum().backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}, batch


def test_prefix_shared_lays_a_row_out_once() -> None:
    """Prompt [5, 6] with responses [8], [9, 2], [4]: each later response sees the prompt, then itself."""
    batch = PrefixSharedLayout(0).collate([_row([5, 6], [[8], [9, 2], [4]])])
    assert batch.input_ids.tolist() == [[5, 6, 8, 9, 2, 4]]
    assert batch.position_ids is not None and batch.position_ids.tolist() == [[0, 1, 2, 2, 3, 2]]
    assert batch.attention_plan is not None
    assert batch.attention_plan.segments == [Segment(0, 3), Segment(3, 5, 0, 2), Segment(5, 6, 0, 2)]
    assert batch.score_targets.tolist() == [8, 9, 2, 4]
    assert batch.score_from.tolist() == [1, 1, 3, 1]  # every first token from the prompt's last position
    assert batch.score_sequence.tolist() == [0, 1, 1, 2]
    assert batch.sequence_row.tolist() == [0, 0, 0]
    assert batch.num_sequences == 3 and batch.num_tokens == 3 + 4 + 3  # per sequence, as padded counts


def test_sequences_are_numbered_response_by_response() -> None:
    """The first response of every row, then the second of every row, then the third of rows that have one: a
    batch of pairs is its chosen sequences, then its rejected ones."""
    rows = [_row([5], [[8], [9]]), _row([7, 7], [[3], [4], [6, 6]], index=1)]
    batch = PaddedLayout(0).collate(rows)
    assert batch.input_ids.tolist() == [[5, 8, 0, 0], [7, 7, 3, 0], [5, 9, 0, 0], [7, 7, 4, 0], [7, 7, 6, 6]]
    assert batch.sequence_row.tolist() == [0, 1, 0, 1, 1]
    assert batch.sequence_scores.tolist() == [0.0, 0.0, -1.0, -1.0, -2.0]
    assert batch.rows == [("t", 0), ("t", 1)] and batch.num_rows == 2
    pairs = PaddedLayout(0).collate([id_pair([5], [8], [9]), id_pair([7], [3], [4], index=1)])
    assert pairs.input_ids.tolist() == [[5, 8], [7, 3], [5, 9], [7, 4]]
    assert pairs.sequence_row.tolist() == [0, 1, 0, 1] and pairs.sequence_scores.tolist() == [1, 1, 0, 0]


@pytest.mark.equivalence
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("layout_cls", [PackedLayout, PrefixSharedLayout])
def test_row_layouts_equal_padded(layout_cls, arch: str, seed: int) -> None:
    rows = _random_rows(seed, sizes=[2, 5, 16, 3])  # K mixed in one micro-batch, up to 16
    ref_out, ref_grads, ref_batch = _row_logps_and_grads(PaddedLayout(0), arch, rows)
    out, grads, batch = _row_logps_and_grads(layout_cls(0), arch, rows)
    assert out.logps.numel() == 26 and batch.num_tokens == ref_batch.num_tokens
    assert batch.input_ids.numel() < ref_batch.input_ids.numel()  # fewer positions computed
    torch.testing.assert_close(out.logps, ref_out.logps, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.tokens, ref_out.tokens)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_prefix_shared_encodes_each_prompt_once() -> None:
    rows = _random_rows(3, sizes=[16])
    prompt, responses = len(rows[0].prompt_ids), sum(len(r) for r in rows[0].responses)
    assert PrefixSharedLayout(0).collate(rows).input_ids.numel() == prompt + responses
    assert PackedLayout(0).collate(rows).input_ids.numel() == 16 * prompt + responses


@pytest.mark.equivalence
@pytest.mark.parametrize("layout_cls", [PaddedLayout, PackedLayout, PrefixSharedLayout])
def test_pairs_and_wider_rows_in_one_batch_score_as_each_row_alone(layout_cls) -> None:
    """Whatever else shares its micro-batch, a row's responses get the log-probs the row gets alone (padded)."""
    scorer = SequenceScorer(build_toy_model(97, seed=4), chunk_size=5)
    rows = _random_rows(5, sizes=[2, 4, 2, 3])
    batch = layout_cls(0).collate(rows)
    mixed = score_responses(scorer, batch)
    for r, row in enumerate(rows):
        alone = score_responses(scorer, PaddedLayout(0).collate([row]))
        mine = batch.sequence_row == r  # this row's sequences, in its responses' order
        torch.testing.assert_close(mixed.logps[mine], alone.logps, rtol=1e-5, atol=1e-5)
        assert torch.equal(mixed.tokens[mine], alone.tokens)
