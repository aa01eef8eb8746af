"""Row shapes -> the three texts to tokenise (prompt, chosen, rejected).

Shapes accepted (key names set by data.prompt_key / data.chosen_key / data.rejected_key):

1. Strings: ``{"prompt": "2+2?", "chosen": " 4", "rejected": " 5"}``. The prompt goes through
   data.input_template (``"Q: {} A:"``) and, with data.apply_chat_template, becomes one user turn rendered by
   the chat template; responses are used exactly as written. A message-list prompt with string responses is
   rendered by the template the same way.
2. Conversational, explicit prompt: ``{"prompt": [{"role": "user", "content": "2+2?"}]`` (or the string
   ``"2+2?"``), ``"chosen": [{"role": "assistant", "content": "4"}], "rejected": [...]}``. When chosen and
   rejected repeat the prompt's messages at their start, those are not counted twice.
3. Conversational, implicit prompt: no prompt (absent or null); chosen and rejected are whole conversations
   and the prompt is their longest shared leading part.

For conversations each response is the text the template adds after the rendered prompt. With the toy
template, prompt ``[user "hi"]`` renders ``"<s><|user|>hi</s><|assistant|>"`` and prompt + ``[assistant "yo"]``
renders ``"<s><|user|>hi</s><|assistant|>yo</s>"``, so the chosen text is ``"yo</s>"``.

Group shapes (one prompt, K responses; read by :meth:`RowConverter.group`, key names data.responses_key /
data.scores_key), rendered by the same rules as the pair shapes above:

4. Scored: ``{"prompt": "2+2?", "responses": [" 4", " 5", " four"], "scores": [1, 0, 1]}`` (higher is
   better, ties allowed); conversational with message-list responses, the prompt explicit or, when absent,
   the leading messages all responses share.
5. Several rejected: ``{"prompt": "2+2?", "chosen": " 4", "rejected": [" 5", " 3"]}``, scores [1, 0, 0];
   conversational when chosen and each rejected are message lists.

A pair row read as a group is ``[chosen, rejected]`` with scores [1, 0].
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

from ..config import DataConfig
from .errors import DataError, DropRow
from .sources import RawRow

Messages = list[dict[str, Any]]


@dataclass
class PairText:
    prompt: str
    chosen: str
    rejected: str
    # False when a chat template rendered the prompt: the template already wrote BOS, so the tokenizer must
    # not add its own.
    prompt_special_tokens: bool


@dataclass
class GroupText:
    """One prompt and K >= 2 distinct response texts with their scores (higher is better; ties allowed).

    ``merged`` counts responses of the row that repeated another one's text and were merged into it (the
    merged response keeps the highest score of its copies).
    """

    prompt: str
    responses: list[str]
    scores: list[float]
    prompt_special_tokens: bool
    merged: int = 0

    @classmethod
    def of_pair(cls, pair: PairText) -> GroupText:
        return cls(pair.prompt, [pair.chosen, pair.rejected], [1.0, 0.0], pair.prompt_special_tokens)


class RowConverter:
    """Turns one :class:`RawRow` into a :class:`PairText` (``__call__``) or a :class:`GroupText`
    (:meth:`group`); raises :class:`DropRow` or :class:`DataError`."""

    def __init__(self, cfg: DataConfig, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.has_template = cfg.chat_template is not None or getattr(tokenizer, "chat_template", None)

    def __call__(self, row: RawRow) -> PairText:
        chosen = self._require(row, "chosen_key")
        rejected = self._require(row, "rejected_key")
        prompt, (chosen, rejected), special = self._texts(row, [chosen, rejected], distinct=True)
        return PairText(prompt, chosen, rejected, special)

    def group(self, row: RawRow) -> GroupText:
        """Any row shape as a group; identical responses are merged, and data.max_responses applied."""
        fields = self._group_fields(row)
        if fields is None:
            return GroupText.of_pair(self(row))
        responses, scores = fields
        prompt, texts, special = self._texts(row, responses, distinct=False)
        keep, scores = merge_duplicates(texts, scores)
        if len(keep) < 2:
            raise DropRow("too_few_responses")
        if min(scores) == max(scores):
            raise DropRow("tied_scores")
        capped = spread_by_rank(scores, self.cfg.max_responses)
        return GroupText(
            prompt,
            [texts[keep[i]] for i in capped],
            [scores[i] for i in capped],
            special,
            len(texts) - len(keep),
        )

    def _group_fields(self, row: RawRow) -> tuple[list[Any], list[float]] | None:
        """The raw responses and scores of a group row, or None for a pair row."""
        key = self.cfg.responses_key
        if key in row.data:
            responses = row.data[key]
            if not isinstance(responses, list):
                raise DataError(
                    f"{row.where()}: key {key!r} (data.responses_key) holds {type(responses).__name__}, not a "
                    "list; give the responses as a list (strings or message lists), with their scores in "
                    f"{self.cfg.scores_key!r} (data.scores_key)."
                )
            if len(responses) < 2:
                raise DropRow("too_few_responses")
            return responses, _scores(row.data.get(self.cfg.scores_key), len(responses))
        rejected = row.data.get(self.cfg.rejected_key)
        # A list of strings or of message lists is several rejected responses; a list of messages (dicts) is
        # one conversational rejected response, i.e. a pair row.
        if isinstance(rejected, list) and rejected and all(isinstance(r, (str, list)) for r in rejected):
            chosen = self._require(row, "chosen_key")
            return [chosen, *rejected], [1.0] + [0.0] * len(rejected)
        return None

    def _texts(self, row: RawRow, responses: list[Any], distinct: bool) -> tuple[str, list[str], bool]:
        """``(prompt text, response texts, prompt_special_tokens)``; ``distinct``: a repeated response drops
        the row (a pair) instead of being left for the caller to merge (a group)."""
        if any(isinstance(r, list) for r in responses):
            prompt, texts, special = self._conversation(row, responses, distinct)
        else:
            prompt, texts, special = self._strings(row, self._require(row, "prompt_key"), responses, distinct)
        # JSON's "\ud800" escape gives a lone surrogate, which no tokenizer can encode (it raises TypeError).
        if not all(_is_utf8(t) for t in (prompt, *texts)):
            raise DropRow("invalid_unicode")
        return prompt, texts, special

    def _require(self, row: RawRow, field: str) -> Any:
        key = getattr(self.cfg, field)
        if key not in row.data:
            keys = ", ".join(repr(k) for k in row.data) or "none"
            raise DataError(
                f"{row.where()}: missing key {key!r} (data.{field}); the row's keys are {keys}. "
                f"Set data.{field} to the key your data uses for this field."
            )
        return row.data[key]

    def _strings(
        self, row: RawRow, prompt: Any, responses: list[Any], distinct: bool
    ) -> tuple[str, list[str], bool]:
        for value in responses if isinstance(prompt, list) else (prompt, *responses):
            if not isinstance(value, str):
                raise DropRow("not_a_string")
        if not all(r.strip() for r in responses):
            raise DropRow("empty_field")
        if distinct and len(set(responses)) < len(responses):
            raise DropRow("identical_responses")
        if isinstance(prompt, list):
            if not any(m["content"].strip() for m in _check_messages(prompt)):
                raise DropRow("empty_field")
            return self._render(row, prompt, True), responses, False
        if not prompt.strip():
            raise DropRow("empty_field")
        if self.cfg.input_template is not None:
            # str.replace, not str.format: braces in the user's own text must survive untouched.
            prompt = self.cfg.input_template.replace("{}", prompt)
        if not self.cfg.apply_chat_template:
            return prompt, responses, True
        return self._render(row, [{"role": "user", "content": prompt}], True), responses, False

    def _conversation(self, row: RawRow, responses: list[Any], distinct: bool) -> tuple[str, list[str], bool]:
        sides = [_check_messages(r) for r in responses]
        prompt = row.data.get(self.cfg.prompt_key)
        if prompt is None:
            # The prompt shared by all responses is the shortest of their prefixes shared with the first.
            shared = min(_shared_prefix(sides[0], side) for side in sides[1:])
            if shared == 0 or any(shared == len(side) for side in sides):
                raise DropRow("no_shared_prompt")
            prompt_msgs = sides[0][:shared]
        elif isinstance(prompt, str):
            prompt_msgs = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list):
            prompt_msgs = _check_messages(prompt)
        else:
            raise DropRow("not_a_string")
        n = len(prompt_msgs)
        repeats = [side[:n] == prompt_msgs for side in sides]
        if all(repeats):
            sides = [side[n:] for side in sides]
        elif any(repeats):
            # Some responses start with the prompt and others with something else: they answer different
            # prompts, so the row compares nothing.
            raise DropRow("prompt_mismatch")
        if not any(m["content"].strip() for m in prompt_msgs):
            raise DropRow("empty_field")
        for side in sides:
            if not side or not any(m["content"].strip() for m in side):
                raise DropRow("empty_field")
            if not any(m["role"] == "assistant" for m in side):
                raise DropRow("no_assistant_turn")
        prompt_text = self._render(row, prompt_msgs, True)
        texts = [self._response(row, prompt_text, prompt_msgs + side) for side in sides]
        if distinct and len(set(texts)) < len(texts):
            raise DropRow("identical_responses")
        return prompt_text, texts, False

    def _response(self, row: RawRow, prompt_text: str, messages: Messages) -> str:
        full = self._render(row, messages, False)
        if not full.startswith(prompt_text):
            raise DropRow("template_mismatch")
        # Templates often end a turn with "\n" after EOS; that newline is not part of the answer.
        text = full[len(prompt_text) :].rstrip()
        if not text:
            raise DropRow("empty_field")
        return text

    def _render(self, row: RawRow, messages: Messages, generation_prompt: bool) -> str:
        if not self.has_template:
            raise DataError(
                f"{row.where()}: this row needs a chat template (conversational data or "
                "data.apply_chat_template) but the tokenizer has none; set data.chat_template to a Jinja "
                "chat template."
            )
        try:
            out = self.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=generation_prompt,
                chat_template=self.cfg.chat_template,
            )
        except jinja2.TemplateSyntaxError as exc:
            raise DataError(
                f"the chat template (data.chat_template or the tokenizer's) does not parse (line {exc.lineno}: {exc.message})."
            ) from None
        except (jinja2.TemplateError, TypeError, ArithmeticError):
            # e.g. the template's own raise_exception on role order, or a TypeError from a loop over one of
            # the row's own fields ({% for t in m.tool_calls %} on "tool_calls": 5): a property of this row.
            raise DropRow("template_error") from None
        return str(out)


def _check_messages(value: Any) -> Messages:
    if not isinstance(value, list):
        raise DropRow("bad_message")
    for m in value:
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise DropRow("bad_message")
    return value


def _is_utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shared_prefix(a: Messages, b: Messages) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _scores(value: Any, count: int) -> list[float]:
    """A group row's scores as floats; missing, not a list of ``count`` finite numbers -> ``bad_scores``."""
    if not isinstance(value, list) or len(value) != count:
        raise DropRow("bad_scores")
    out = []
    for score in value:
        # bool is an int to Python, but true/false is not a score; float() of a huge JSON int overflows.
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise DropRow("bad_scores")
        try:
            number = float(score)
        except OverflowError:
            raise DropRow("bad_scores") from None
        if not math.isfinite(number):
            raise DropRow("bad_scores")
        out.append(number)
    return out


def merge_duplicates(keys: Sequence[Hashable], scores: Sequence[float]) -> tuple[list[int], list[float]]:
    """Identical responses merged into their first copy: ``(indices kept, in order; their scores)``, each
    score the highest among the copies, since the best judgement of that text is what the row says of it.

    ``keys ["a", "b", "a"], scores [0, 2, 3]`` -> ``([0, 1], [3.0, 2.0])``.
    """
    slot: dict[Hashable, int] = {}
    kept: list[int] = []
    best: list[float] = []
    for i, (key, score) in enumerate(zip(keys, scores, strict=True)):
        if key in slot:
            best[slot[key]] = max(best[slot[key]], score)
            continue
        slot[key] = len(kept)
        kept.append(i)
        best.append(float(score))
    return kept, best


def spread_by_rank(scores: Sequence[float], cap: int | None) -> list[int]:
    """Indices (in row order) of the responses data.max_responses = ``cap`` keeps out of K = len(scores).

    Rank the responses by score, best first (ties keep row order), and keep ranks round(i (K-1) / (cap-1)),
    i = 0..cap-1, rounding halves up: the best (rank 0), the worst (rank K-1) and the rest evenly between.
    K 8, cap 4: ranks 0, 7/3 = 2.33 -> 2, 14/3 = 4.67 -> 5, and 7.
    """
    k = len(scores)
    if cap is None or k <= cap:
        return list(range(k))
    ranked = sorted(range(k), key=lambda i: -scores[i])  # sorted() is stable: ties stay in row order
    # floor(x + 1/2) in integers; steps of (K-1)/(cap-1) >= 1 never pick the same rank twice.
    return sorted(ranked[(2 * i * (k - 1) + cap - 1) // (2 * (cap - 1))] for i in range(cap))
