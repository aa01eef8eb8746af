"""Batched sampling: left padding must not change what a prompt generates, and seeds make it reproducible."""

from __future__ import annotations

import torch

from preftune.model.generation import SamplingOptions, cut_at_eos, render_prompt, sample_responses
from preftune.toy import build_toy_model, build_toy_tokenizer, toy_corpus


def _toy() -> tuple[torch.nn.Module, object]:
    tokenizer = build_toy_tokenizer(toy_corpus())
    torch.manual_seed(0)
    model = build_toy_model(len(tokenizer), hidden_size=32)
    model.train()  # as during DPO; sampling must switch dropout off and restore the mode
    return model, tokenizer


def test_batched_greedy_equals_one_prompt_at_a_time() -> None:
    model, tokenizer = _toy()
    prompts = ["say thanks", "a much longer prompt that needs left padding in a batch", "hi"]
    greedy = SamplingOptions(max_new_tokens=12, temperature=0, batch_size=8)
    batched = sample_responses(model, tokenizer, prompts, options=greedy)
    for i, prompt in enumerate(prompts):
        alone = sample_responses(model, tokenizer, [prompt], options=greedy)[0][0]
        assert batched[i][0].response_ids == alone.response_ids
        assert batched[i][0].prompt_ids == render_prompt(tokenizer, prompt, chat=True)
        # The reference: greedy decoding by hand, one token at a time, no cache, no padding.
        ids = torch.tensor([alone.prompt_ids])
        with torch.no_grad():
            for _ in range(len(alone.response_ids)):
                nxt = model(input_ids=ids).logits[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
        assert ids[0, len(alone.prompt_ids) :].tolist() == alone.response_ids


def test_samples_grouped_per_prompt_reproducible_and_cut_at_eos() -> None:
    model, tokenizer = _toy()
    opts = SamplingOptions(max_new_tokens=10, temperature=1.0, batch_size=3, seed=7)
    first = sample_responses(model, tokenizer, ["a", "b"], num_samples=4, options=opts)
    again = sample_responses(model, tokenizer, ["a", "b"], num_samples=4, options=opts)
    assert [len(group) for group in first] == [4, 4]
    assert all(s.prompt_index == i for i, group in enumerate(first) for s in group)
    assert [[s.response_ids for s in g] for g in first] == [[s.response_ids for s in g] for g in again]
    for group in first:
        for s in group:
            assert 1 <= len(s.response_ids) <= 10
            eos = [k for k, t in enumerate(s.response_ids) if t == tokenizer.eos_token_id]
            assert eos in ([], [len(s.response_ids) - 1])  # EOS only as the last token
            assert s.finished == bool(eos)
    assert model.training  # mode restored


def test_a_response_ends_at_any_of_the_models_eos_tokens() -> None:
    # Llama-3 and Qwen2.5 list several EOS ids in their generation config; any of them ends a response.
    assert cut_at_eos([5, 7, 2, 0], {2, 7}) == ([5, 7], True)
    assert cut_at_eos([5, 2, 7, 0], {2, 7}) == ([5, 2], True)
    assert cut_at_eos([5, 6, 8], {2, 7}) == ([5, 6, 8], False)
