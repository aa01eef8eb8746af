"""Rewards for ``preftune iterate``: a Python callable or a sequence-classification model, behind one signature.

Every reward is ``fn(prompts: list[str], responses: list[str]) -> list[float]``, one score per (prompt,
response) pair, higher is better. ``iterate.reward`` names it as

- ``package.module:function`` (imported; the current folder is searched too, as ``python -m`` would),
- ``path/to/file.py:function`` (loaded from that file), or
- a folder holding an ``AutoModelForSequenceClassification`` with one output (its logit is the score).

Whatever the source, :func:`score` checks what comes back (count, numbers, finite) and names the prompt when not.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..model.loading import DTYPES, load_errors
from ..strategy.single import default_device

RewardFn = Callable[[list[str], list[str]], Sequence[Any]]
KEY = "iterate.reward"


def load_reward(spec: str, dtype: str = "float32", batch_size: int = 16) -> RewardFn:
    """The reward ``spec`` names; raises a one-line :class:`ConfigError` when it cannot be used."""
    if Path(spec).is_dir():
        return RewardModel(spec, dtype, batch_size)
    target, colon, name = spec.rpartition(":")
    if not colon or not target or not name:
        raise ConfigError(
            f"{KEY}: {spec!r} is neither a reward-model folder nor module:function (or path/file.py:function)"
        )
    module = _import_file(target) if target.endswith(".py") else _import_module(target)
    fn = getattr(module, name, None)
    if fn is None:
        raise ConfigError(f"{KEY}: {target} has no attribute {name!r}")
    if not callable(fn):
        raise ConfigError(f"{KEY}: {target}:{name} is a {type(fn).__name__}, not a function")
    return fn


def _import_module(name: str) -> Any:
    # The console script puts its own folder on sys.path, not the current one; a reward module sitting next to
    # the user's config should import as it would under ``python -m``.
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(
                f"{KEY}: cannot import module {name!r} (no module named {exc.name!r})"
            ) from None
        raise ConfigError(f"{KEY}: importing {name!r} failed: {_raised(exc)}") from None
    except Exception as exc:  # the module's own top-level code failed; say where
        raise ConfigError(f"{KEY}: importing {name!r} failed: {_raised(exc)}") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())


def _import_file(path: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{KEY}: file {path} does not exist")
    # A unique module name per file, so two reward files called rewards.py never shadow each other.
    module_name = f"preftune_reward_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    assert spec is not None and spec.loader is not None  # a .py file always has a source loader
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"{KEY}: loading {path} failed: {_raised(exc)}") from None
    return module


def _raised(exc: BaseException) -> str:
    """``"rewards.py:12 in score: ZeroDivisionError: division by zero"``: the innermost frame, on one line."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name}: " if frames else ""
    message = " ".join(str(exc).split())
    return f"{where}{type(exc).__name__}: {message}" if message else f"{where}{type(exc).__name__}"


def score(reward: RewardFn, prompts: list[str], responses: list[str], where: list[str]) -> list[float]:
    """``reward(prompts, responses)`` as checked floats; ``where[i]`` names item ``i`` in errors.

    Example: a reward returning ``[0.5, nan]`` for two items stops the run with
    ``iterate.reward: returned nan for prompt 7, sample 1; scores must be finite numbers``.
    """
    try:
        raw = reward(prompts, responses)
    except ConfigError:
        raise
    except Exception as exc:  # the user's code failed: one line naming its file and line, not a traceback
        raise ConfigError(f"{KEY}: the reward raised {_raised(exc)}") from None
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().reshape(-1).tolist()
    try:
        values = list(raw)
    except TypeError:
        raise ConfigError(f"{KEY}: returned a {type(raw).__name__}, not a list of scores") from None
    if len(values) != len(prompts):
        raise ConfigError(
            f"{KEY}: returned {len(values)} scores for {len(prompts)} responses; one per response"
        )
    scores = []
    for i, value in enumerate(values):
        try:
            if isinstance(value, str | bytes):
                raise TypeError
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{KEY}: returned {value!r} for {where[i]}; scores must be numbers") from None
        if not math.isfinite(number):
            raise ConfigError(f"{KEY}: returned {number} for {where[i]}; scores must be finite numbers")
        scores.append(number)
    return scores


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


class RewardModel:
    """A sequence-classification model as a reward: the score is its single logit at the last token.

    Text scored: ``[user: prompt, assistant: response]`` rendered with the reward model's chat template when it
    has one, else ``prompt + response`` tokenised with its special tokens. Rows are left-padded and passed as
    embeddings with explicit positions, so every row's last column is its own last token: the model then pools
    there regardless of its pad token (which may equal EOS, the very token a chat turn ends with).
    """

    def __init__(self, folder: str, dtype: str = "float32", batch_size: int = 16) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        with load_errors(KEY, folder):
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=DTYPES[dtype])
        labels = self.model.config.num_labels
        if labels != 1:
            raise ConfigError(
                f"{KEY}: {folder} has num_labels {labels}; a reward model has exactly one output"
            )
        self.model.eval()  # it stays on the CPU between calls: training runs in between and needs the GPU memory
        self.device = default_device()
        self.batch_size = batch_size

    def encode(self, prompt: str, response: str) -> list[int]:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                tokenize=False,
            )
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok(prompt + response)["input_ids"])

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        self.model.to(self.device)
        try:
            return self._scores(prompts, responses)
        finally:
            self.model.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    @torch.no_grad()
    def _scores(self, prompts: list[str], responses: list[str]) -> list[float]:
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        embed = self.model.get_input_embeddings()
        scores: list[float] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            width = max(len(ids) for ids in batch)
            input_ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(batch):
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                mask[row, width - len(ids) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            with _quiet_transformers():  # its warning that embeddings hide padding is the point here
                logits = self.model(
                    inputs_embeds=embed(input_ids.to(self.device)),
                    attention_mask=mask.to(self.device),
                    position_ids=positions.to(self.device),
                ).logits
            scores.extend(logits[:, 0].float().tolist())
        return scores
