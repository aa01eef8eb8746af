"""Scoring options that need more than plain summed log-probs, through every layout, against the naive
full-logits path: LD-DPO's per-token weights (loss.ld_alpha) and WPO's per-response aligned log-probs."""

from __future__ import annotations

import pytest
import torch

from preftune.layouts import PackedLayout, PaddedLayout, PrefixSharedLayout
from preftune.model.logps import naive_token_logps
from preftune.model.scorer import SequenceScorer
from preftune.toy import build_toy_model
from toy_env import id_pair, score_pairs

LAYOUTS = [PaddedLayout, PackedLayout, PrefixSharedLayout]
# Pair 0: chosen 2 tokens, rejected 4 (shared length 2); pair 1: chosen 3, rejected 1 (shared length 1).
PAIRS = [id_pair([5, 6, 7], [8, 9], [10, 11, 12, 13]), id_pair([14], [15, 16, 17], [18], index=1)]


def _naive_logits(model, prompt: list[int], response: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Full (len(response), V) logits predicting each response token, and those tokens."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    return logits, torch.tensor(response)


def _naive_token_logps(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    return naive_token_logps(*_naive_logits(model, prompt, response))


def test_shared_length_weights_match_docstring_example() -> None:
    batch = PaddedLayout(0, ld_alpha=0.5).collate([id_pair([5, 6], [8], [9, 2])])
    assert batch.score_weights is not None and batch.score_weights.tolist() == [1.0, 1.0, 0.5]
    assert batch.ld_alpha == 0.5
    plain = PaddedLayout(0).collate([id_pair([5, 6], [8], [9, 2])])
    assert plain.score_weights is None and plain.ld_alpha is None


@pytest.mark.parametrize("layout_cls", LAYOUTS)
def test_ld_alpha_sums_the_shared_length_plus_alpha_times_the_rest(layout_cls) -> None:
    model = build_toy_model(97, seed=3).eval()
    layout = layout_cls(0, ld_alpha=0.25)
    with torch.no_grad():
        out = score_pairs(SequenceScorer(model, chunk_size=3), layout.collate(PAIRS))
        c0, r0 = (
            _naive_token_logps(model, PAIRS[0].prompt_ids, ids)
            for ids in (PAIRS[0].chosen_ids, PAIRS[0].rejected_ids)
        )
        c1, r1 = (
            _naive_token_logps(model, PAIRS[1].prompt_ids, ids)
            for ids in (PAIRS[1].chosen_ids, PAIRS[1].rejected_ids)
        )
    # Closed form: l = min(len chosen, len rejected) per pair; tokens past l count 0.25 times.
    want_chosen = torch.stack([c0.sum(), c1[0] + 0.25 * c1[1:].sum()])
    want_rejected = torch.stack([r0[:2].sum() + 0.25 * r0[2:].sum(), r1.sum()])
    torch.testing.assert_close(out.chosen_logps, want_chosen, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.rejected_logps, want_rejected, rtol=1e-5, atol=1e-5)
    # Token counts stay the responses' lengths: the length-normalised losses divide by them, as TRL's do.
    assert out.chosen_tokens.tolist() == [2, 3] and out.rejected_tokens.tolist() == [4, 1]


@pytest.mark.equivalence
@pytest.mark.parametrize("layout_cls", LAYOUTS)
def test_ld_alpha_one_is_the_plain_sum_exactly(layout_cls) -> None:
    model = build_toy_model(97, seed=3)
    scorer = SequenceScorer(model, chunk_size=3)
    got = score_pairs(scorer, layout_cls(0, ld_alpha=1.0).collate(PAIRS))
    want = score_pairs(scorer, layout_cls(0).collate(PAIRS))
    assert torch.equal(got.chosen_logps, want.chosen_logps)
    assert torch.equal(got.rejected_logps, want.rejected_logps)


def test_ld_alpha_refuses_a_row_of_more_than_two_responses_naming_it() -> None:
    from preftune.data import Row

    pair = Row(prompt_ids=[5], responses=[[6], [7, 8]], scores=[1.0, 0.0], source="t", index=0)
    assert PaddedLayout(0, ld_alpha=0.5).collate([pair]).score_weights is not None
    wide = Row(prompt_ids=[5], responses=[[6], [7, 8], [9]], scores=[2.0, 1.0, 0.0], source="t", index=3)
    with pytest.raises(ValueError, match=r"t row 3: loss\.ld_alpha: .* a pair, and this row has 3 responses"):
        PaddedLayout(0, ld_alpha=0.5).collate([pair, wide])


@pytest.mark.equivalence
@pytest.mark.parametrize("layout_cls", LAYOUTS)
def test_aligned_logps_equal_the_naive_full_logits_value(layout_cls) -> None:
    """a = mean over tokens of log p(token) - log sum_v p(v)^2, from full logits, for every layout."""
    model = build_toy_model(97, seed=3).eval()
    layout = layout_cls(0)
    with torch.no_grad():
        out = score_pairs(SequenceScorer(model, chunk_size=3), layout.collate(PAIRS), want_aligned=True)
        plain = score_pairs(SequenceScorer(model, chunk_size=3), layout.collate(PAIRS))

    def naive(prompt: list[int], response: list[int]) -> torch.Tensor:
        logits, targets = _naive_logits(model, prompt, response)
        log_sum_sq = torch.log((torch.softmax(logits, dim=-1) ** 2).sum(-1))
        return (naive_token_logps(logits, targets) - log_sum_sq).mean()

    assert out.chosen_aligned is not None and out.rejected_aligned is not None
    want_c = torch.stack([naive(p.prompt_ids, p.chosen_ids) for p in PAIRS])
    want_r = torch.stack([naive(p.prompt_ids, p.rejected_ids) for p in PAIRS])
    torch.testing.assert_close(out.chosen_aligned, want_c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.rejected_aligned, want_r, rtol=1e-5, atol=1e-5)
    assert plain.chosen_aligned is None  # only computed when asked for
    assert torch.equal(out.chosen_logps, plain.chosen_logps)


def _pair_losses(layout, cfg, model, ref_model, pairs=PAIRS):
    from preftune.losses import LossState
    from preftune.reference.sources import ModelReference, freeze
    from preftune.training.objective import row_losses

    reference = ModelReference(freeze(SequenceScorer(ref_model, chunk_size=3)))
    scorer = SequenceScorer(model, chunk_size=3)
    return row_losses(scorer, reference, layout.collate(pairs), cfg, LossState())


@pytest.mark.equivalence
@pytest.mark.parametrize("layout_cls", LAYOUTS)
def test_ld_alpha_one_trains_exactly_as_plain_dpo(layout_cls) -> None:
    from preftune.config import LossConfig

    model, ref_model = build_toy_model(97, seed=3), build_toy_model(97, seed=4)
    got = _pair_losses(layout_cls(0, ld_alpha=1.0), LossConfig(ld_alpha=1.0), model, ref_model)
    want = _pair_losses(layout_cls(0), LossConfig(), model, ref_model)
    assert torch.equal(got.per_row, want.per_row)
    assert torch.equal(got.loss.rewards, want.loss.rewards)


def test_a_batch_collated_for_another_ld_alpha_is_refused() -> None:
    from preftune.config import LossConfig

    model = build_toy_model(97, seed=3)
    with pytest.raises(
        ValueError, match=r"loss\.ld_alpha is 0\.5 but the batch was collated with ld_alpha None"
    ):
        _pair_losses(PaddedLayout(0), LossConfig(ld_alpha=0.5), model, model)


@pytest.mark.parametrize("layout_cls", LAYOUTS)
def test_wpo_model_gradient_is_the_weight_times_the_plain_gradient(layout_cls) -> None:
    """Through the chunked LM head and a real model: the lse outputs carry no gradient, so with one pair
    d(w loss)/d theta = w d(loss)/d theta, with w from the policy's own forward."""
    from preftune.config import LossConfig

    ref_model = build_toy_model(97, seed=4)
    grads, weights = {}, None
    for wpo in (True, False):
        model = build_toy_model(97, seed=3)
        out = _pair_losses(layout_cls(0), LossConfig(wpo=wpo, wpo_clamp=False), model, ref_model, PAIRS[:1])
        out.objective.backward()
        grads[wpo] = {n: p.grad.clone() for n, p in model.named_parameters()}
        weights = out.loss.weights if wpo else weights
    assert weights is not None and weights.shape == (1,) and float(weights) != 1.0
    for name, plain in grads[False].items():
        torch.testing.assert_close(grads[True][name], weights[0] * plain, rtol=1e-5, atol=1e-7, msg=name)
