"""Many responses per prompt: a prompt group (one prompt, K responses) in every layout gives the same
per-response log-probs, token counts and parameter gradients as the padded layout (relative 1e-5, float32), for
Llama and Qwen2 (grouped-query attention), with K mixed in one micro-batch up to 16; and a group of two equals
the pair it holds."""

from __future__ import annotations

import pytest
import torch

from preftune.data import TokenizedGroup
from preftune.layouts import PackedLayout, PaddedLayout, PrefixSharedLayout
from preftune.layouts.batch import score_responses
from preftune.layouts.plan import Segment
from preftune.model.scorer import SequenceScorer
from preftune.toy import build_toy_model
from toy_env import id_pair


def _group(prompt: list[int], responses: list[list[int]], index: int = 0) -> TokenizedGroup:
    return TokenizedGroup(prompt, responses, [float(-k) for k in range(len(responses))], "t", index)


def _random_groups(seed: int, sizes: list[int]) -> list[TokenizedGroup]:
    gen = torch.Generator().manual_seed(seed)

    def tokens(low: int, high: int) -> list[int]:
        n = int(torch.randint(low, high, (1,), generator=gen))
        return torch.randint(3, 97, (n,), generator=gen).tolist()

    return [_group(tokens(1, 12), [tokens(1, 10) for _ in range(k)], i) for i, k in enumerate(sizes)]


def _logps_and_grads(layout, arch: str, groups: list[TokenizedGroup]):
    model = build_toy_model(97, arch=arch, seed=4)
    batch = layout.collate_groups(groups)
    out = score_responses(SequenceScorer(model, chunk_size=5), batch)
    weights = torch.linspace(-1, 1, out.logps.numel())  # a distinct upstream weight per response
    (weights * out.logps).sum().backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}, batch


def test_prefix_shared_lays_a_group_out_once() -> None:
    """Prompt [5, 6] with responses [8], [9, 2], [4]: each later response sees the prompt, then itself."""
    batch = PrefixSharedLayout(0).collate_groups([_group([5, 6], [[8], [9, 2], [4]])])
    assert batch.input_ids.tolist() == [[5, 6, 8, 9, 2, 4]]
    assert batch.position_ids is not None and batch.position_ids.tolist() == [[0, 1, 2, 2, 3, 2]]
    assert batch.attention_plan is not None
    assert batch.attention_plan.segments == [Segment(0, 3), Segment(3, 5, 0, 2), Segment(5, 6, 0, 2)]
    assert batch.score_targets.tolist() == [8, 9, 2, 4]
    assert batch.score_from.tolist() == [1, 1, 3, 1]  # every first token from the prompt's last position
    assert batch.score_sequence.tolist() == [0, 1, 1, 2]
    assert batch.sequence_group is not None and batch.sequence_group.tolist() == [0, 0, 0]
    assert batch.num_sequences == 3 and batch.num_tokens == 3 + 4 + 3  # per sequence, as padded counts


def test_sequences_are_numbered_group_after_group() -> None:
    groups = [_group([5], [[8], [9]]), _group([7, 7], [[3], [4], [6, 6]], index=1)]
    batch = PaddedLayout(0).collate_groups(groups)
    assert batch.input_ids.tolist() == [[5, 8, 0, 0], [5, 9, 0, 0], [7, 7, 3, 0], [7, 7, 4, 0], [7, 7, 6, 6]]
    assert batch.sequence_group is not None and batch.sequence_group.tolist() == [0, 0, 1, 1, 1]
    assert batch.rows == [("t", 0), ("t", 1)] and batch.num_pairs == 2


@pytest.mark.equivalence
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("layout_cls", [PackedLayout, PrefixSharedLayout])
def test_group_layouts_equal_padded(layout_cls, arch: str, seed: int) -> None:
    groups = _random_groups(seed, sizes=[2, 5, 16, 3])  # K mixed in one micro-batch, up to 16
    ref_out, ref_grads, ref_batch = _logps_and_grads(PaddedLayout(0), arch, groups)
    out, grads, batch = _logps_and_grads(layout_cls(0), arch, groups)
    assert out.logps.numel() == 26 and batch.num_tokens == ref_batch.num_tokens
    assert batch.input_ids.numel() < ref_batch.input_ids.numel()  # fewer positions computed
    torch.testing.assert_close(out.logps, ref_out.logps, rtol=1e-5, atol=1e-5)
    assert torch.equal(out.tokens, ref_out.tokens)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_prefix_shared_encodes_each_prompt_once() -> None:
    groups = _random_groups(3, sizes=[16])
    prompt, responses = len(groups[0].prompt_ids), sum(len(r) for r in groups[0].responses)
    assert PrefixSharedLayout(0).collate_groups(groups).input_ids.numel() == prompt + responses
    assert PackedLayout(0).collate_groups(groups).input_ids.numel() == 16 * prompt + responses


@pytest.mark.equivalence
@pytest.mark.parametrize("layout_cls", [PaddedLayout, PackedLayout, PrefixSharedLayout])
def test_a_group_of_two_equals_its_pair(layout_cls) -> None:
    model = build_toy_model(97, seed=4)
    scorer = SequenceScorer(model, chunk_size=5)
    pairs = [id_pair([5, 6, 7], [8, 9], [10], 0), id_pair([11], [12, 13, 14], [15, 16], 1)]
    layout = layout_cls(0)
    pair_out = layout.pair_logps(scorer, layout.collate(pairs))
    groups = [_group(p.prompt_ids, [p.chosen_ids, p.rejected_ids], p.index) for p in pairs]
    group_out = score_responses(scorer, layout.collate_groups(groups))
    torch.testing.assert_close(group_out.logps[0::2], pair_out.chosen_logps, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(group_out.logps[1::2], pair_out.rejected_logps, rtol=1e-6, atol=1e-6)
    assert torch.equal(group_out.tokens[0::2], pair_out.chosen_tokens)


def test_a_group_batch_has_no_chosen_and_rejected_halves() -> None:
    batch = PaddedLayout(0).collate_groups([_group([5], [[8], [9], [4]])])
    with pytest.raises(ValueError, match="use score_responses"):
        PaddedLayout(0).pair_logps(SequenceScorer(build_toy_model(97)), batch)
