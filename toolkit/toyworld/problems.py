"""Factory word problems with 1-3 whole-number operations: generator, parser and splits.

A question is an opening sentence, one sentence per further operation, and a closing
question. The opening either states a starting amount ("A bin holds 40 bolts.") or fuses
the first operation into it ("A line makes 14 parts per hour for 6 hours."). Every later
sentence applies one operation to the running amount. ``parse_question`` inverts the
templates, so it can re-derive the answer of any well-formed question a teacher drafts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

OPS = ("+", "-", "*", "/")
# One noun: a from-scratch 2M-parameter teacher did not keep six nouns consistent across a question
# (84 of 89 drafts mixed them); the arithmetic structure, which is what ARTE tailors, is unchanged.
NOUNS = ("parts",)

PLAIN_OPENINGS = (
    "A bin holds {a} {n}.",
    "A line has made {a} {n}.",
    "The store room has {a} {n}.",
)
FUSED_OPENINGS = {
    "+": ("One line makes {a} {n} and another line makes {b}.", "A bin holds {a} {n} and a box holds {b} more."),
    "-": ("A line makes {a} {n}, but {b} of them are defective.", "A crate has {a} {n} and {b} of them are broken."),
    "*": ("A line makes {a} {n} per hour for {b} hours.", "There are {a} crates with {b} {n} in each.", "{a} machines each make {b} {n}."),
    "/": ("{a} {n} are split into {b} equal crates and one is kept.", "{a} {n} are shared equally by {b} lines, and we follow one line."),
}
STEP_SENTENCES = {
    "+": ("{b} more {n} are added.", "A delivery brings {b} more {n}.", "The night shift adds {b} {n}."),
    "-": ("{b} {n} are defective and removed.", "Then {b} {n} are shipped out.", "A worker takes {b} {n} for testing."),
    "*": ("The same happens on {b} days.", "{b} identical lines each do the same.", "This is repeated for {b} shifts."),
    "/": ("They are shared equally by {b} lines, and we follow one line.", "Only one in every {b} passes the check.", "They are packed into {b} equal crates and one is kept."),
}
QUESTIONS = ("How many {n} are there now?", "How many {n} are left now?", "How many {n} does the line have now?")

# Operand ranges small enough for a 0.7M-parameter student to partly learn the arithmetic.
MAX_RESULT = 200
MAX_ADD = 99
MUL_RANGE = range(2, 13)


@dataclass(frozen=True)
class Step:
    a: int
    op: str
    b: int
    result: int

    @property
    def equation(self) -> str:
        return f"{self.a}{self.op}{self.b}={self.result}"


@dataclass(frozen=True)
class Problem:
    question: str
    steps: tuple[Step, ...]
    answer: int


def apply_op(a: int, op: str, b: int) -> int | None:
    """Exact non-negative result, or None (negative, inexact or by-zero division)."""
    if op == "+":
        r = a + b
    elif op == "-":
        r = a - b
    elif op == "*":
        r = a * b
    elif op == "/":
        if b == 0 or a % b:
            return None
        r = a // b
    else:
        return None
    return r if r >= 0 else None


# ---------------------------------------------------------------- generation


def _first_operand(rng: random.Random, op: str) -> int:
    if op == "*":
        return rng.choice(MUL_RANGE)
    if op == "/":
        return rng.choice(MUL_RANGE) * rng.choice(MUL_RANGE)
    return rng.randint(10, MAX_ADD)


def _second_operand(rng: random.Random, a: int, op: str) -> int | None:
    """An operand b that keeps ``a op b`` in range, or None where there is none."""
    if op == "+":
        hi = min(MAX_ADD, MAX_RESULT - a)
        return rng.randint(2, hi) if hi >= 2 else None
    if op == "-":
        hi = min(MAX_ADD, a - 1)  # keep intermediate amounts positive
        return rng.randint(1, hi) if hi >= 1 else None
    if op == "*":
        return rng.choice(MUL_RANGE) if a in MUL_RANGE else None
    divisors = [d for d in MUL_RANGE if a % d == 0]
    return rng.choice(divisors) if divisors else None


def _sample_steps(rng: random.Random, ops: list[str]) -> tuple[Step, ...] | None:
    steps, a = [], _first_operand(rng, ops[0])
    for op in ops:
        b = _second_operand(rng, a, op)
        if b is None:
            return None
        r = apply_op(a, op, b)
        steps.append(Step(a, op, b, r))
        a = r
    return tuple(steps)


def generate_problem(rng: random.Random, n_ops: int) -> Problem:
    if not 1 <= n_ops <= 3:
        raise ValueError(f"n_ops must be 1..3, got {n_ops}")
    while True:
        steps = _sample_steps(rng, [rng.choice(OPS) for _ in range(n_ops)])
        if steps:
            break
    noun = rng.choice(NOUNS)
    first = steps[0]
    if rng.random() < 0.5:
        sentences = [rng.choice(FUSED_OPENINGS[first.op]).format(a=first.a, b=first.b, n=noun)]
        rest = steps[1:]
    else:
        sentences = [rng.choice(PLAIN_OPENINGS).format(a=first.a, n=noun)]
        rest = steps
    sentences += [rng.choice(STEP_SENTENCES[s.op]).format(b=s.b, n=noun) for s in rest]
    sentences.append(rng.choice(QUESTIONS).format(n=noun))
    return Problem(" ".join(sentences), steps, steps[-1].result)


# The task asks for up to three steps and weighs the longer ones most: the student's own pretraining
# (WorldSpec.student_op_weights in build.py) stops at two steps, so the third is what the teacher's data must teach.
TASK_OP_WEIGHTS = (0.2, 0.3, 0.5)


def sample_problems(seed: int | str, n: int, op_weights=TASK_OP_WEIGHTS, exclude=frozenset()) -> list[Problem]:
    """``n`` problems with distinct questions (none in ``exclude``); 1, 2, 3 ops by ``op_weights``."""
    rng = random.Random(seed)
    seen, out = set(exclude), []
    for _ in range(200 * n + 1000):
        if len(out) == n:
            return out
        p = generate_problem(rng, rng.choices((1, 2, 3), weights=op_weights)[0])
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    if len(out) < n:
        raise RuntimeError(f"could only sample {len(out)} of {n} distinct problems")
    return out


SPLIT_ORDER = ("test", "validation", "preference", "seed")


def make_splits(seed: int, sizes: dict[str, int], op_weights=TASK_OP_WEIGHTS) -> dict[str, list[Problem]]:
    """Disjoint splits. Each split draws from its own stream, test first, so the test set
    depends only on ``seed`` and its own size, not on how big the other splits are."""
    order = [s for s in SPLIT_ORDER if s in sizes] + sorted(set(sizes) - set(SPLIT_ORDER))
    taken: set[str] = set()
    splits = {}
    for name in order:
        splits[name] = sample_problems(f"toy:{seed}:{name}", sizes[name], op_weights, frozenset(taken))
        taken.update(p.question for p in splits[name])
    return {name: splits[name] for name in sizes}


# ---------------------------------------------------------------- parsing

_NUM = r"(0|[1-9]\d{0,5})"
_NOUN = "(" + "|".join(NOUNS) + ")"
_FIELD = re.compile(r"\{([abn])\}")


def _compile(template: str) -> tuple[re.Pattern, tuple[str, ...]]:
    """Regex for one template, plus the field name ("a", "b", "n") of each group."""
    parts, fields, pos = [], [], 0
    for m in _FIELD.finditer(template):
        parts += [re.escape(template[pos : m.start()]), _NOUN if m.group(1) == "n" else _NUM]
        fields.append(m.group(1))
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts)), tuple(fields)


def _table(templates, op=None):
    return [(op, *_compile(t)) for t in templates]


_OPENINGS = _table(PLAIN_OPENINGS) + [row for op, ts in FUSED_OPENINGS.items() for row in _table(ts, op)]
_STEPS = [row for op, ts in STEP_SENTENCES.items() for row in _table(ts, op)]
_QUESTIONS = _table(QUESTIONS)
_SENTENCE_END = re.compile(r"(?<=[.?])\s+")


def _match(table, sentence: str):
    """(op, {field: value}) of the one template the sentence matches, else None."""
    for op, pattern, fields in table:
        m = pattern.fullmatch(sentence)
        if not m:
            continue
        values: dict[str, object] = {}
        for name, text in zip(fields, m.groups()):
            value = text if name == "n" else int(text)
            if values.setdefault(name, value) != value:
                return None
        return op, values
    return None


def parse_question(text: str) -> Problem | None:
    """Steps and answer of a well-formed question of the family, else None."""
    if not isinstance(text, str):
        return None
    sentences = _SENTENCE_END.split(" ".join(text.split()))
    if not 2 <= len(sentences) <= 5:  # opening, up to 3 operation sentences, question
        return None
    parsed = [_match(_OPENINGS, sentences[0])]
    parsed += [_match(_STEPS, s) for s in sentences[1:-1]]
    parsed.append(_match(_QUESTIONS, sentences[-1]))
    if any(p is None for p in parsed):
        return None
    nouns = {v["n"] for _, v in parsed if "n" in v}
    if len(nouns) != 1:
        return None
    first_op, first = parsed[0]
    ops = ([(first_op, first["b"])] if first_op else []) + [(op, v["b"]) for op, v in parsed[1:-1]]
    if not 1 <= len(ops) <= 3:
        return None
    steps, a = [], first["a"]
    for op, b in ops:
        r = apply_op(a, op, b)
        if r is None:
            return None
        steps.append(Step(a, op, b, r))
        a = r
    return Problem(text, tuple(steps), a)
