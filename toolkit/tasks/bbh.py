"""Big-Bench-Hard: ``{"examples": [{"input", "target"}]}`` plus the published three-shot CoT prompt."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import InputError
from .answers import extract_answer, infer_answer_kind, normalize
from .boolean import STYLES, boolean_rationale, solve_boolean
from .base import ARTE_STYLE, Example, Task
from .loading import answer_style, dedupe, default_techniques, length_style, read_text, require_str, split_pool

_OPTION_RE = re.compile(r"^\(([A-Z])\) (.*)$", re.M)


def load_bbh(
    path: str | Path,
    cot_prompt_path: str | Path | None = None,
    n_seed: int = 3,
    preference_fraction: float = 0.3,
    n_preference: int | None = None,
    seed: int = 0,
) -> Task:
    """A BBH task. Seeds are the CoT prompt's demos (with rationales) where given, else the
    first ``n_seed`` examples; the rest are shuffled by ``seed`` into preference and test."""
    path = Path(path)
    records = _read_records(path)
    kind = infer_answer_kind([target for _, target in records])
    examples = dedupe([_example(question, normalize(target, kind), kind) for question, target in records])
    if cot_prompt_path is not None:
        description, demos = parse_cot_prompt(cot_prompt_path, kind)
    else:
        description, demos = path.stem.replace("_", " ").capitalize() + ".", []
    if n_seed < 0:
        raise ValueError(f"n_seed must be >= 0, got {n_seed}")
    extra = max(0, n_seed - len(demos))
    seeds = demos[:n_seed] + examples[:extra]
    seen = {s.question.strip() for s in seeds}
    pool = [e for e in examples[extra:] if e.question.strip() not in seen]
    preference, test = split_pool(pool, preference_fraction, n_preference, seed)
    boolean = path.stem == "boolean_expressions"
    return Task(
        name=path.stem,
        description=description,
        answer_kind=kind,
        seed=seeds,
        preference=preference,
        test=test,
        style=answer_style(kind, [e.answer for e in examples]),
        techniques=default_techniques(kind),
        source=str(path),
        solver=solve_boolean if boolean else None,  # answers computed, not copied
        gold_rationale=boolean_rationale if boolean else None,  # the gold ceiling's worked solutions
        gold_in_style=boolean_rationale if boolean else None,
        gold_styles=STYLES if boolean else (),
        style_of=length_style,
    )


def parse_cot_prompt(path: str | Path, kind: str) -> tuple[str, list[Example]]:
    """(task description, demos) from a BBH CoT prompt: a header, then ``Q: .. A: ..`` blocks
    whose answers end "So the answer is X."."""
    path = Path(path)
    text = read_text(path)
    # The canary line and the "-----" rule above the description are not part of it.
    text = re.split(r"^-----\s*$", text, maxsplit=1, flags=re.M)[-1]
    head, *blocks = re.split(r"^Q: ?", text, flags=re.M)
    description = re.sub(r"^Task description:\s*", "", head.strip())
    if not blocks:
        raise InputError(path, None, "no 'Q: ... A: ...' demonstrations found")
    demos = []
    for i, block in enumerate(blocks, start=1):
        question, sep, answer = block.partition("\nA:")
        if not sep:
            raise InputError(path, f"demo {i}", "no 'A:' line after the question")
        rationale = re.sub(r"^\s*Let's think step by step\.", "", answer).strip()
        gold = extract_answer(rationale, kind, ARTE_STYLE)
        if gold is None or not re.search(r"answer is", rationale, re.I):
            raise InputError(path, f"demo {i}", "no 'So the answer is ...' sentence")
        demos.append(_example(question.strip(), gold, kind, rationale))
    return description, demos


def _read_records(path: Path) -> list[tuple[str, str]]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise InputError(path, f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise InputError(path, "examples", 'missing: expected {"examples": [{"input": ..., "target": ...}]}')
    if not data["examples"]:
        raise InputError(path, "examples", "empty")
    records = []
    for i, record in enumerate(data["examples"]):
        where = f"examples[{i}]"
        if not isinstance(record, dict):
            raise InputError(path, where, f"expected an object, got {type(record).__name__}")
        records.append(tuple(require_str(record, key, path, where, ".") for key in ("input", "target")))
    return records


def _example(question: str, answer: str, kind: str, rationale: str | None = None) -> Example:
    # Letter options sit inside BBH questions; they are copied out for choice tasks only.
    options = tuple(text.strip() for _, text in _OPTION_RE.findall(question)) if kind == "choice" else ()
    return Example(question=question, answer=answer, rationale=rationale, options=options)
