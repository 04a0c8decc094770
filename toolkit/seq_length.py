"""The training sequence length a trainer needs for its data: the longest example, in tokens, within the
model's context. A fixed cap cut real-model examples silently: the DPO pairs' erased prompt with the task's
3 worked demonstrations runs to ~700 tokens, so at 512 trl dropped every pair as "fully truncated" and the
sampler then failed on an empty dataset; an SFT row of a long BBH question plus its 160-token rationale
lost its stated answer at 256."""

from __future__ import annotations

from typing import Iterable, Sequence

from .errors import InputError

_SLACK = 2  # BOS and EOS the trainers add around what the tokenizer counts here


def model_context(model) -> int | None:
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def fitting_length(tokenizer, examples: Iterable[tuple[str, Sequence[str]]], context: int | None,
                   what: str, advice: str) -> int:
    """Tokens the longest (prompt, completions) example needs: its prompt plus its longest completion.
    An example longer than ``context`` is refused with ``advice`` rather than truncated."""
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    needed = max((count(prompt) + max(count(c) for c in completions) for prompt, completions in examples),
                 default=0) + _SLACK
    if context is not None and needed > context:
        raise InputError(what, None, f"an example needs {needed} tokens, more than the model's context of "
                         f"{context}: {advice}")
    return needed
