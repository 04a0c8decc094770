"""What every dataset loader shares: reading files, deterministic splits, technique prompts."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence, TypeVar

from ..errors import InputError
from .base import ARTE_STYLE, Example, PromptStyle

if TYPE_CHECKING:
    from .base import Task

T = TypeVar("T")


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(path, None, f"cannot read: {e}") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(1-based line number, record) for each non-blank line; a bad line raises InputError."""
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(path, f"line {lineno}", f"invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(record, dict):
            raise InputError(path, f"line {lineno}", f"expected a JSON object, got {type(record).__name__}")
        yield lineno, record


def require_str(record: dict, key: str, path: Path, where: str, sep: str = ": ") -> str:
    """record[key] as a non-empty string, or InputError at ``where``, ``sep``, ``key``.

    ``sep="."`` names a JSON path ("examples[12].target"), the default a line ("line 7: answer").
    """
    if key not in record:
        problem = "missing"
    elif not isinstance(record[key], str):
        problem = f"expected a string, got {type(record[key]).__name__}"
    elif not record[key].strip():
        problem = "empty"
    else:
        return record[key]
    raise InputError(path, f"{where}{sep}{key}", problem)


def dedupe(examples: Sequence[Example]) -> list[Example]:
    """Each question once, so splits cannot share one; a question given with different gold
    answers is dropped altogether (BBH causal_judgement has two), as no answer can score on it."""
    golds: dict[str, set[str]] = {}
    for e in examples:
        golds.setdefault(e.question.strip(), set()).add(e.answer)
    kept, seen = [], set()
    for e in examples:
        key = e.question.strip()
        if len(golds[key]) == 1 and key not in seen:
            kept.append(e)
            seen.add(key)
    return kept


def split_pool(
    pool: Sequence[T], preference_fraction: float = 0.3, n_preference: int | None = None, seed: int = 0
) -> tuple[list[T], list[T]]:
    """Shuffle ``pool`` by ``seed`` and cut it into (preference, test); the two never overlap.

    ``n_preference``, when given, overrides ``preference_fraction``.
    """
    if not 0.0 <= preference_fraction <= 1.0:
        raise ValueError(f"preference_fraction must lie in [0, 1], got {preference_fraction}")
    k = round(len(pool) * preference_fraction) if n_preference is None else n_preference
    if not 0 <= k <= len(pool):
        raise ValueError(f"n_preference must lie in [0, {len(pool)}], got {k}")
    order = list(pool)
    random.Random(seed).shuffle(order)
    return order[:k], order[k:]


_FINAL_ANSWER_RE = re.compile(r"(?:so )?the answer is.*$|<ans>.*$", re.I | re.S)
LENGTH_STYLES = ("answer-only", "short", "medium", "long")  # words of reasoning: < 4, <= 40, <= 100, more


def length_style(rationale: str) -> str:
    """A real rationale's shape by how much reasoning it writes before its final answer: what the learnability
    gap (Li et al. 2025: students under 3B learn more from short chains of thought) is about."""
    words = len(_FINAL_ANSWER_RE.sub("", rationale, count=1).split())
    return "answer-only" if words < 4 else "short" if words <= 40 else "medium" if words <= 100 else "long"


_TECHNIQUES = {
    "choice": {"eliminate": "Rule out wrong options one by one, saying why each fails."},
    "bool": {"inside_out": "Evaluate the innermost parts first and substitute their values."},
    "validity": {
        "formalize": "Write each premise in symbols, then check whether the conclusion follows from them alone."
    },
    "yesno": {"counterexample": "Look for a case that would make the claim false before deciding."},
    "number": {"equations": "Write each quantity as an equation and compute the results one at a time."},
    "text": {"restate": "Say exactly what form the answer must take, then build it piece by piece."},
}


_ANSWER_WORDS = {"bool": ("True", "False"), "yesno": ("Yes", "No"), "validity": ("valid", "invalid")}


def answer_style(kind: str, answers: Sequence[str] = ()) -> PromptStyle:
    """The ARTE layout whose completions also end right after a closed-vocabulary answer sentence ("So the answer
    is True." as a BBH CoT demonstration ends): a batch of decodes otherwise runs on for as many tokens as the
    longest rambling row, and what follows the first stated answer is never read."""
    from dataclasses import replace

    words = _ANSWER_WORDS.get(kind) or (sorted(set(answers)) if kind == "choice" else ())
    return replace(ARTE_STYLE, stop=ARTE_STYLE.stop + tuple(f"answer is {w}." for w in words))


def default_techniques(kind: str) -> dict[str, str]:
    """Reasoning-technique prompts (name -> instruction) suited to an answer kind."""
    return {
        "decompose": "Break the problem into numbered steps and solve them in order.",
        **_TECHNIQUES.get(kind, {}),
        "verify": "Solve the problem, then check the result against the question before answering.",
    }


def jsonl_task(path: Path, examples: list[Example], *, name: str, description: str, answer_kind: str, n_seed: int,
               preference_fraction: float, n_preference: int | None, seed: int) -> Task:
    """A task from a JSONL file's examples: de-duplicated, the first n_seed as seeds, the rest split."""
    from .base import ARTE_STYLE, Task

    examples = dedupe(examples)
    if not examples:
        raise InputError(path, None, "no records")
    if not 0 <= n_seed <= len(examples):
        raise ValueError(f"n_seed must lie in [0, {len(examples)}], got {n_seed}")
    preference, test = split_pool(examples[n_seed:], preference_fraction, n_preference, seed)
    return Task(name=name, description=description, answer_kind=answer_kind, seed=examples[:n_seed],
                preference=preference, test=test, style=ARTE_STYLE, techniques=default_techniques(answer_kind),
                source=str(path), style_of=length_style)
