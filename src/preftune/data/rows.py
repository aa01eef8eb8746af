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
"""

from __future__ import annotations

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


class RowConverter:
    """Turns one :class:`RawRow` into a :class:`PairText`; raises :class:`DropRow` or :class:`DataError`."""

    def __init__(self, cfg: DataConfig, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.has_template = cfg.chat_template is not None or getattr(tokenizer, "chat_template", None)

    def __call__(self, row: RawRow) -> PairText:
        chosen = self._require(row, "chosen_key")
        rejected = self._require(row, "rejected_key")
        if isinstance(chosen, list) or isinstance(rejected, list):
            text = self._conversation(row, chosen, rejected)
        else:
            text = self._strings(row, self._require(row, "prompt_key"), chosen, rejected)
        # JSON's "\ud800" escape gives a lone surrogate, which no tokenizer can encode (it raises TypeError).
        if not all(_is_utf8(t) for t in (text.prompt, text.chosen, text.rejected)):
            raise DropRow("invalid_unicode")
        return text

    def _require(self, row: RawRow, field: str) -> Any:
        key = getattr(self.cfg, field)
        if key not in row.data:
            keys = ", ".join(repr(k) for k in row.data) or "none"
            raise DataError(
                f"{row.where()}: missing key {key!r} (data.{field}); the row's keys are {keys}. "
                f"Set data.{field} to the key your data uses for this field."
            )
        return row.data[key]

    def _strings(self, row: RawRow, prompt: Any, chosen: Any, rejected: Any) -> PairText:
        for value in (chosen, rejected) if isinstance(prompt, list) else (prompt, chosen, rejected):
            if not isinstance(value, str):
                raise DropRow("not_a_string")
        if not chosen.strip() or not rejected.strip():
            raise DropRow("empty_field")
        if chosen == rejected:
            raise DropRow("identical_responses")
        if isinstance(prompt, list):
            if not any(m["content"].strip() for m in _check_messages(prompt)):
                raise DropRow("empty_field")
            return PairText(self._render(row, prompt, True), chosen, rejected, False)
        if not prompt.strip():
            raise DropRow("empty_field")
        if self.cfg.input_template is not None:
            # str.replace, not str.format: braces in the user's own text must survive untouched.
            prompt = self.cfg.input_template.replace("{}", prompt)
        if not self.cfg.apply_chat_template:
            return PairText(prompt, chosen, rejected, True)
        rendered = self._render(row, [{"role": "user", "content": prompt}], True)
        return PairText(rendered, chosen, rejected, False)

    def _conversation(self, row: RawRow, chosen: Any, rejected: Any) -> PairText:
        chosen, rejected = _check_messages(chosen), _check_messages(rejected)
        prompt = row.data.get(self.cfg.prompt_key)
        if prompt is None:
            shared = _shared_prefix(chosen, rejected)
            if shared == 0 or shared in (len(chosen), len(rejected)):
                raise DropRow("no_shared_prompt")
            prompt_msgs = chosen[:shared]
        elif isinstance(prompt, str):
            prompt_msgs = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list):
            prompt_msgs = _check_messages(prompt)
        else:
            raise DropRow("not_a_string")
        n = len(prompt_msgs)
        repeats = (chosen[:n] == prompt_msgs, rejected[:n] == prompt_msgs)
        if all(repeats):
            chosen, rejected = chosen[n:], rejected[n:]
        elif any(repeats):
            # One side starts with the prompt and the other with something else: the two conversations answer
            # different prompts, so the pair compares nothing.
            raise DropRow("prompt_mismatch")
        if not any(m["content"].strip() for m in prompt_msgs):
            raise DropRow("empty_field")
        for side in (chosen, rejected):
            if not side or not any(m["content"].strip() for m in side):
                raise DropRow("empty_field")
            if not any(m["role"] == "assistant" for m in side):
                raise DropRow("no_assistant_turn")
        prompt_text = self._render(row, prompt_msgs, True)
        chosen_text = self._response(row, prompt_text, prompt_msgs + chosen)
        rejected_text = self._response(row, prompt_text, prompt_msgs + rejected)
        if chosen_text == rejected_text:
            raise DropRow("identical_responses")
        return PairText(prompt_text, chosen_text, rejected_text, False)

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
