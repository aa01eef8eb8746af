"""The chunked LM-head log-probs and the padded layout equal the naive full-logits path."""

import math

import pytest
import torch

from preftune.layouts import PaddedLayout
from preftune.model.logps import chunked_token_logps, chunked_token_logps_lse, naive_token_logps
from preftune.model.scorer import SequenceScorer
from preftune.toy import build_toy_model
from toy_env import id_pair, score_pairs


@pytest.mark.equivalence
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_values_and_grads_match_naive(with_bias: bool, chunk: int) -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(10, 8, generator=gen, requires_grad=True)
    weight = torch.randn(50, 8, generator=gen, requires_grad=True)
    bias = torch.randn(50, generator=gen, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 50, (10,), generator=gen)
    upstream = torch.randn(10, generator=gen)

    fast = chunked_token_logps(hidden, weight, targets, bias, chunk_size=chunk)
    grads_fast = torch.autograd.grad(
        (fast * upstream).sum(), [hidden, weight] + ([bias] if with_bias else [])
    )
    slow = naive_token_logps(torch.nn.functional.linear(hidden, weight, bias), targets)
    grads_slow = torch.autograd.grad(
        (slow * upstream).sum(), [hidden, weight] + ([bias] if with_bias else [])
    )

    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    for gf, gs in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(gf, gs, rtol=1e-5, atol=1e-6)


def test_chunked_handles_no_tokens() -> None:
    weight = torch.randn(5, 4, requires_grad=True)
    out = chunked_token_logps(torch.zeros(0, 4), weight, torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)
    out.sum().backward()
    assert weight.grad is not None and float(weight.grad.abs().sum()) == 0.0


def test_padded_collate_matches_docstring_example() -> None:
    batch = PaddedLayout(pad_token_id=0).collate([id_pair([5, 6], [8], [9, 2]), id_pair([7], [3, 2], [4])])
    assert batch.input_ids.tolist() == [[5, 6, 8, 0], [7, 3, 2, 0], [5, 6, 9, 2], [7, 4, 0, 0]]
    assert batch.score_targets.tolist() == [8, 3, 2, 9, 2, 4]
    assert batch.score_sequence.tolist() == [0, 1, 1, 2, 2, 3]
    assert batch.score_from.tolist() == [1, 4, 5, 9, 10, 12]
    assert batch.num_tokens == 3 + 3 + 4 + 2


def _naive_sequence_logps(model, prompt, response):
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0, :-1]
    token_logps = naive_token_logps(logits, ids[0, 1:])
    return token_logps[len(prompt) - 1 :].sum()


@pytest.mark.equivalence
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_padded_layout_equals_naive_and_ignores_padding(arch: str) -> None:
    model = build_toy_model(97, arch=arch, seed=3).eval()
    gen = torch.Generator().manual_seed(1)

    def rand(n):
        return torch.randint(3, 97, (n,), generator=gen).tolist()

    pairs = [
        id_pair(rand(5), rand(4), rand(7)),
        id_pair(rand(2), rand(9), rand(1)),
        id_pair(rand(11), rand(3), rand(3)),
    ]
    layout = PaddedLayout(pad_token_id=0)
    scorer = SequenceScorer(model, chunk_size=4)
    with torch.no_grad():
        out = score_pairs(scorer, layout.collate(pairs))
        expected_c = torch.stack([_naive_sequence_logps(model, p.prompt_ids, p.chosen_ids) for p in pairs])
        expected_r = torch.stack([_naive_sequence_logps(model, p.prompt_ids, p.rejected_ids) for p in pairs])
        # The first pair alone (no padding at all in its batch) must give the same numbers as inside the batch.
        alone = score_pairs(scorer, layout.collate(pairs[:1]))
    torch.testing.assert_close(out.chosen_logps, expected_c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.rejected_logps, expected_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alone.chosen_logps, out.chosen_logps[:1], rtol=1e-5, atol=1e-5)
    assert out.chosen_tokens.tolist() == [4, 9, 3] and out.rejected_tokens.tolist() == [7, 1, 3]


@pytest.mark.equivalence
def test_padded_layout_gradients_equal_naive() -> None:
    model = build_toy_model(61, seed=5)
    pairs = [id_pair([4, 5, 6], [7, 8], [9]), id_pair([10], [11, 12, 13], [14, 15])]
    layout = PaddedLayout(pad_token_id=0)
    out = score_pairs(SequenceScorer(model, chunk_size=2), layout.collate(pairs))
    (out.chosen_logps.sum() - 2 * out.rejected_logps.sum()).backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    total = sum(
        _naive_sequence_logps(model, p.prompt_ids, p.chosen_ids)
        - 2 * _naive_sequence_logps(model, p.prompt_ids, p.rejected_ids)
        for p in pairs
    )
    total.backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(fast[name], param.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_moe_aux_loss_is_returned_for_mixtral() -> None:
    model = build_toy_model(61, arch="mixtral", seed=2)
    layout = PaddedLayout(pad_token_id=0)
    out = score_pairs(SequenceScorer(model), layout.collate([id_pair([4, 5], [6, 7], [8])]), want_aux=True)
    assert out.aux_loss is not None and out.aux_loss.requires_grad and float(out.aux_loss.detach()) > 0


@pytest.mark.equivalence
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk", [1, 3, 4, 64])
def test_chunked_lse_outputs_equal_logsumexp_of_full_logits(with_bias: bool, chunk: int) -> None:
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(10, 8, generator=gen, requires_grad=True)
    weight = torch.randn(50, 8, generator=gen, requires_grad=True)
    bias = torch.randn(50, generator=gen) if with_bias else None
    targets = torch.randint(0, 50, (10,), generator=gen)

    logps, lse = chunked_token_logps_lse(hidden, weight, targets, bias, chunk_size=chunk)
    logits = torch.nn.functional.linear(hidden, weight, bias).detach()
    assert lse.shape == (10, 2) and not lse.requires_grad
    torch.testing.assert_close(lse[:, 0], torch.logsumexp(logits, dim=-1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse[:, 1], torch.logsumexp(2 * logits, dim=-1), rtol=1e-6, atol=1e-6)
    # The log-probs and their gradients are those of the plain call: the extra output changes nothing.
    plain = chunked_token_logps(hidden, weight, targets, bias, chunk_size=chunk)
    assert torch.equal(logps, plain)
    got = torch.autograd.grad(logps.sum(), [hidden, weight])
    want = torch.autograd.grad(plain.sum(), [hidden, weight])
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)


def test_chunked_lse_closed_form_and_empty() -> None:
    # One row, hidden [1], weight [[0], [ln 3]]: logits [0, ln 3] -> lse(z) = ln 4, lse(2z) = ln 10.
    weight = torch.tensor([[0.0], [math.log(3)]])
    logps, lse = chunked_token_logps_lse(torch.ones(1, 1), weight, torch.tensor([1]))
    torch.testing.assert_close(logps, torch.tensor([math.log(3 / 4)]))
    torch.testing.assert_close(lse, torch.tensor([[math.log(4), math.log(10)]]))
    logps, lse = chunked_token_logps_lse(torch.zeros(0, 1), weight, torch.zeros(0, dtype=torch.long))
    assert logps.shape == (0,) and lse.shape == (0, 2)
