"""Answer kinds: infer one from a dataset's targets, normalize answers, extract them from completions.

Every answer is compared in its canonical form (``normalize``). An answer that does not parse
as its kind falls back to the text form, so it can still match a gold answer that is equally
off-kind (BBH's movie_recommendation has one target "Monsters, Inc" among the letters).

The bottom of ``tasks``: it imports nothing from the package (``base`` imports it), so an answer style
is anything with the two tag attributes (``AnswerTags``), e.g. ``base.PromptStyle``.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Protocol


class AnswerTags(Protocol):
    """Where a completion states its answer: between ``answer_open`` and ``answer_close`` (empty: the line's end)."""

    answer_open: str
    answer_close: str

ANSWER_KINDS = ("choice", "bool", "validity", "yesno", "number", "text")

_NUMBER = r"-?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)"
_NUMBER_RE = re.compile(rf"(?<![\w.]){_NUMBER}")
_LETTER_RE = re.compile(r"\(([A-Z])\)")
_BARE_LETTER_RE = re.compile(r"^\(?([A-Za-z])[).:]?$")
_WORDS = {  # kind -> (pattern of one answer word, canonical spelling by lowercase word)
    "bool": (re.compile(r"\b(true|false)\b", re.I), {"true": "True", "false": "False"}),
    "validity": (re.compile(r"\b(valid|invalid)\b", re.I), {"valid": "valid", "invalid": "invalid"}),
    "yesno": (re.compile(r"\b(yes|no)\b", re.I), {"yes": "Yes", "no": "No"}),
}
_EXACT = {  # what a gold target of each kind looks like, whole
    "choice": re.compile(r"\([A-Z]\)"),
    "bool": re.compile(r"true|false", re.I),
    "validity": re.compile(r"valid|invalid", re.I),
    "yesno": re.compile(r"yes|no", re.I),
    "number": re.compile(_NUMBER),
}
_HASHES_RE = re.compile(r"####[ \t]*(.*)$", re.M)
# "So the answer is X." (BBH CoT): X runs to the end of its sentence or line; a period
# inside a number ("3.5") does not end it.
_ANSWER_IS_RE = re.compile(r"\banswer is\s*:?\s*(.*?)(?:\.\s|\.$|$)", re.I | re.M)


def infer_answer_kind(targets: list[str]) -> str:
    """The kind that at least 90% of the gold targets fit; a few slips in a dataset are tolerated."""
    targets = [t.strip() for t in targets]
    if not targets:
        return "text"
    counts = {kind: sum(bool(p.fullmatch(t)) for t in targets) for kind, p in _EXACT.items()}
    kind = max(counts, key=counts.get)
    return kind if counts[kind] >= 0.9 * len(targets) else "text"


def _text(answer: str) -> str:
    answer = " ".join(answer.split()).strip("*`\"' ")
    return answer.removesuffix(".").rstrip().lower()


def _number(text: str) -> str | None:
    found = _NUMBER_RE.findall(text.replace("\u2212", "-"))
    if not found:
        return None
    try:
        value = Decimal(found[-1].replace(",", ""))  # the last: "9 * 2 = 18" gives 18
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def normalize(answer: str, kind: str) -> str:
    """Canonical form: "(A)", "True", "valid", "Yes", "1234", or lowercase collapsed text."""
    if kind not in ANSWER_KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(ANSWER_KINDS)}")
    text = answer.strip()
    if kind == "choice":
        letter = _LETTER_RE.search(text) or _BARE_LETTER_RE.match(text)
        if letter:
            return f"({letter.group(1).upper()})"
    elif kind in _WORDS:
        pattern, canonical = _WORDS[kind]
        words = {canonical[w.lower()] for w in pattern.findall(text)}
        if len(words) == 1:  # "True or False" is no answer
            return words.pop()
    elif kind == "number":
        number = _number(text)
        if number is not None:
            return number
    return _text(text)


def _tagged(completion: str, style: AnswerTags) -> str | None:
    if not style.answer_open:
        return None
    open_, close = re.escape(style.answer_open), re.escape(style.answer_close)
    # An open tag with no close counts to the end of its line: generation often stops on the close tag.
    pattern = rf"{open_}(.*?){close}" if close else rf"{open_}(.*)$"
    found = [m for m in re.findall(pattern, completion, re.S if close else re.M) if m.strip()]
    if not found and close:
        found = [m for m in re.findall(rf"{open_}(.*)$", completion, re.M) if m.strip()]
    return found[-1] if found else None


def _stated(completion: str) -> str | None:
    # The later of "#### X" and "the answer is X": a markdown "#### Step 1" heading before
    # "So the answer is (B)." must not win.
    found = [(m.start(), m.group(1)) for p in (_HASHES_RE, _ANSWER_IS_RE) for m in p.finditer(completion)]
    found = [f for f in found if f[1].strip()]
    return max(found)[1] if found else None


def _fallback(completion: str, kind: str) -> str | None:
    if kind == "choice":
        letters = _LETTER_RE.findall(completion)
        return f"({letters[-1]})" if letters else None
    if kind in _WORDS:
        words = _WORDS[kind][0].findall(completion)
        return words[-1] if words else None
    if kind == "number":
        return _number(completion)
    return None  # free text has no shape to look for


def extract_answer(completion: str, kind: str, style: AnswerTags) -> str | None:
    """The final answer in a completion, normalized; None when it states none.

    Tries, in order, the style's answer tags, then ``#### X`` or "the answer is X", then the
    kind's own shape (a letter, word or number). Within each, the last occurrence wins.
    """
    for found in (
        _tagged(completion, style),
        _stated(completion),
        _fallback(completion, kind),
    ):
        if found is not None:
            return normalize(found, kind)
    return None
