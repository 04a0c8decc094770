"""GSM8K: JSONL of ``{"question", "answer"}`` where the answer's reasoning ends in ``#### n``."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from .answers import normalize
from .base import Example, Task
from .loading import jsonl_task, read_jsonl, require_str

DESCRIPTION = "Solve grade-school math word problems that take several steps of arithmetic."
_FINAL_RE = re.compile(r"####\s*(-?[\d,]*\.?\d+)\s*$")
_CALC_RE = re.compile(r"<<[^<>]*>>")


def strip_calculator_annotations(text: str) -> str:
    """'9 * 2 = $<<9*2=18>>18' -> '9 * 2 = $18'."""
    return _CALC_RE.sub("", text)


def load_gsm8k(
    path: str | Path,
    n_seed: int = 3,
    preference_fraction: float = 0.3,
    n_preference: int | None = None,
    seed: int = 0,
    keep_calculator_annotations: bool = False,
    name: str = "gsm8k",
) -> Task:
    """GSM8K-format file. Seeds are the first ``n_seed`` records; the rest are shuffled by
    ``seed`` into preference and test. Rationales are the reasoning before ``####``."""
    path = Path(path)
    examples = []
    for lineno, record in read_jsonl(path):
        where = f"line {lineno}"
        question = require_str(record, "question", path, where)
        solution = require_str(record, "answer", path, where)
        final = _FINAL_RE.search(solution)
        if final is None:
            raise InputError(path, where, "answer: does not end in '#### <number>'")
        rationale = solution[: final.start()].strip()
        if not keep_calculator_annotations:
            rationale = strip_calculator_annotations(rationale)
        examples.append(Example(question.strip(), normalize(final.group(1), "number"), rationale or None))
    return jsonl_task(path, examples, name=name, description=DESCRIPTION, answer_kind="number", n_seed=n_seed,
                      preference_fraction=preference_fraction, n_preference=n_preference, seed=seed)
