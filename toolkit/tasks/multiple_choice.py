"""Multiple choice: JSONL of ``{"question", "options": [...], "answer"}``.

The answer may be a letter ("B" or "(B)"), a 0-based index (1) or the text of an option.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from .base import Example, Task
from .loading import jsonl_task, read_jsonl, require_str

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def render_question(question: str, options: tuple[str, ...]) -> str:
    """The question followed by "Options:" and "(A) ..." lines, as BBH lays them out."""
    lines = [question.strip(), "Options:"] + [f"({LETTERS[i]}) {text}" for i, text in enumerate(options)]
    return "\n".join(lines)


def load_multiple_choice(
    path: str | Path,
    n_seed: int = 3,
    preference_fraction: float = 0.3,
    n_preference: int | None = None,
    seed: int = 0,
    description: str | None = None,
    name: str | None = None,
) -> Task:
    """Multiple-choice file. Seeds are the first ``n_seed`` records; the rest are shuffled by
    ``seed`` into preference and test. Gold answers become "(B)"."""
    path = Path(path)
    examples = []
    for lineno, record in read_jsonl(path):
        where = f"line {lineno}"
        question = require_str(record, "question", path, where)
        options = _options(record, path, where)
        answer = _answer_index(record, options, path, where)
        examples.append(Example(render_question(question, options), f"({LETTERS[answer]})", options=options))
    name = name or path.stem
    description = description or f"Answer multiple-choice questions ({name.replace('_', ' ')})."
    return jsonl_task(path, examples, name=name, description=description, answer_kind="choice", n_seed=n_seed,
                      preference_fraction=preference_fraction, n_preference=n_preference, seed=seed)


def _options(record: dict, path: Path, where: str) -> tuple[str, ...]:
    options = record.get("options")
    if not isinstance(options, list) or not 2 <= len(options) <= len(LETTERS):
        raise InputError(path, f"{where}: options", f"expected a list of 2 to {len(LETTERS)} strings")
    if not all(isinstance(o, str) and o.strip() for o in options):
        raise InputError(path, f"{where}: options", "every option must be a non-empty string")
    return tuple(o.strip() for o in options)


def _answer_index(record: dict, options: tuple[str, ...], path: Path, where: str) -> int:
    answer = record.get("answer")
    last = len(options) - 1
    bad = f"{answer!r} is not a letter (A) to ({LETTERS[last]}), an index 0 to {last} or an option's text"
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < len(options):
            return answer
        raise InputError(path, f"{where}: answer", bad)
    text = require_str(record, "answer", path, where).strip()
    letter = re.fullmatch(r"\(?([A-Z])\)?", text)
    if letter and LETTERS.index(letter.group(1)) < len(options):
        return LETTERS.index(letter.group(1))
    matches = [i for i, o in enumerate(options) if o.casefold() == text.casefold()]
    if len(matches) == 1:
        return matches[0]
    raise InputError(path, f"{where}: answer", bad)
