"""Fixtures shared across test files; keep them generic (no assumptions about any one module's tests)."""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from preftune.toy import build_toy_tokenizer, toy_corpus


@pytest.fixture(scope="session")
def toy_tokenizer() -> PreTrainedTokenizerFast:
    """The toy byte-level BPE (BOS <s> = 1 prepended, EOS </s> = 2, pad = 0, chat template emitting BOS).

    Session-wide: do not mutate it; build another with ``build_toy_tokenizer`` to change anything.
    """
    return build_toy_tokenizer(toy_corpus())
