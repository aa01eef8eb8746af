"""Fixtures shared across test files; keep them generic (no assumptions about any one module's tests)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator

import pytest
from transformers import PreTrainedTokenizerFast

from preftune.toy import build_toy_tokenizer, toy_corpus
from toy_env import toy_workspace


@pytest.fixture(scope="session")
def toy_tokenizer() -> PreTrainedTokenizerFast:
    """The toy byte-level BPE (BOS <s> = 1 prepended, EOS </s> = 2, pad = 0, chat template emitting BOS).

    Session-wide: do not mutate it; build another with ``build_toy_tokenizer`` to change anything.
    """
    return build_toy_tokenizer(toy_corpus())


@pytest.fixture(scope="module")
def ws(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The module's toy workspace (:func:`toy_env.toy_workspace`): its sizes are the module's ``WORKSPACE`` dict
    of keyword arguments, the defaults without one. A module with other files defines its own ``ws``."""
    sizes = getattr(request.module, "WORKSPACE", {})
    return toy_workspace(tmp_path_factory.mktemp("ws"), **sizes)


@contextlib.contextmanager
def _processes_only_when_slow(item: pytest.Item) -> Iterator[None]:
    """A test that starts a process (the CLI, torchrun, a bench script) is marked ``slow``, so that the fast tier
    (``pytest -m "not slow"``) stays fast: starting one without the mark fails the test, saying so."""
    if item.get_closest_marker("slow") is not None:
        yield
        return
    original = subprocess.Popen.__init__

    def refuse(self: subprocess.Popen, args: object, *rest: object, **options: object) -> None:
        raise AssertionError(f"{item.nodeid} starts a process ({str(args)[:80]}): mark it @pytest.mark.slow")

    subprocess.Popen.__init__ = refuse  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = original  # type: ignore[method-assign]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _processes_only_when_slow(item):  # module fixtures run here, for the first test that asks for them
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _processes_only_when_slow(item):
        yield
