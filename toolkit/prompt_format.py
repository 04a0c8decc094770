"""One rule for how a prompt becomes model input, the same in every stage, the bundle and the edge runtime.

A prompt (the task's `Q: ... A:` text, a drafting prompt, a one-shot demo plus question) is rendered
as ``bos + prefix + prompt + suffix`` and then tokenized with ``add_special_tokens=False``:

- ``plain``: no prefix or suffix; ``bos`` is the tokenizer's BOS text where its own post-processor
  adds one (Gemma), else empty (SmolLM2, the embedded models). So BOS appears once, as the tokenizer
  and its model expect, whatever later tokenization adds.
- ``chat``: the model's chat template around one user turn, with the assistant turn opened
  (``add_generation_prompt``); its prefix and suffix are rendered once with a sentinel, so the bundle
  can store two strings and the edge runtime needs no template engine. The completion (what SFT and
  DPO train on) follows the suffix: the loss falls on the assistant turn only.
- ``auto`` (the default): ``chat`` where the tokenizer has a chat template, else ``plain``.

``attach(tokenizer, fmt)`` is called where the toolkit loads a tokenizer (``models.load_tokenizer``);
``render(tokenizer, text)`` is called wherever text meets a tokenizer.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

from .errors import InputError

Mode = Literal["auto", "chat", "plain"]
# In a prompt, what follows this mark opens the model's answer: after the assistant-turn opening in chat
# mode (so a drafting prompt's `<Question_4><input>` primes the reply, not the user's message); removed in
# plain mode, where the text simply runs on.
ANSWER_START = "\x1e"
_SENTINEL = "\x00EDGE_TAILOR_PROMPT\x00"
_FORMATS: "weakref.WeakKeyDictionary[object, PromptFormat]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class PromptFormat:
    mode: Literal["chat", "plain"] = "plain"
    bos: str = ""
    prefix: str = ""
    suffix: str = ""

    def render(self, text: str, with_bos: bool = True) -> str:
        """``with_bos=False`` where the tokenization that follows adds BOS itself (trl's trainers tokenize
        text with the tokenizer's defaults): BOS once either way."""
        user, _, answer = text.partition(ANSWER_START)
        return f"{self.bos if with_bos else ''}{self.prefix}{user}{self.suffix}{answer}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, source: object = "manifest.json") -> PromptFormat:
        if not isinstance(data, dict) or data.get("mode") not in ("chat", "plain") or \
                not all(isinstance(data.get(k, ""), str) for k in ("bos", "prefix", "suffix")):
            raise InputError(source, "prompt_format", "must be {mode: chat|plain, bos, prefix, suffix} (strings)")
        return cls(data["mode"], data.get("bos", ""), data.get("prefix", ""), data.get("suffix", ""))


def _adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos and tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos]


def resolve(tokenizer, mode: Mode = "auto", source: object = "config") -> PromptFormat:
    """The format ``mode`` means for this tokenizer (``auto``: chat where a template exists)."""
    template = getattr(tokenizer, "chat_template", None)
    if mode == "chat" and not template:
        raise InputError(source, "prompt_format", "'chat' asks for a chat template and this tokenizer has none "
                                                  "(use plain or auto)")
    bos = tokenizer.bos_token if _adds_bos(tokenizer) else ""
    if mode == "plain" or (mode == "auto" and not template):
        return PromptFormat("plain", bos)
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                             add_generation_prompt=True)
    if rendered.count(_SENTINEL) != 1:
        raise InputError(source, "prompt_format", "the chat template does not show the user's message once: "
                                                  "use plain")
    prefix, suffix = rendered.split(_SENTINEL)
    if bos and prefix.startswith(bos):
        bos = ""  # the template writes BOS itself (Gemma's does)
    return PromptFormat("chat", bos, prefix, suffix)


def attach(tokenizer, fmt: PromptFormat) -> None:
    _FORMATS[tokenizer] = fmt


def format_of(tokenizer) -> PromptFormat:
    """The format attached where the tokenizer was loaded; plain (BOS as the tokenizer adds it) otherwise."""
    fmt = _FORMATS.get(tokenizer)
    if fmt is None:
        fmt = resolve(tokenizer, "plain")
        attach(tokenizer, fmt)
    return fmt


def render(tokenizer, text: str) -> str:
    return format_of(tokenizer).render(text)


def render_all(tokenizer, texts: Sequence[str]) -> list[str]:
    fmt = format_of(tokenizer)
    return [fmt.render(t) for t in texts]
