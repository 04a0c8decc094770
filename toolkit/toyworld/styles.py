"""Rationale styles for the toy teacher's corpus, and a checker for drafted rationales.

Every style ends in ``#### <n>`` and writes each operation as ``a op b=r`` with no spaces,
so a calculator can find, fill and check the equations in a draft.
"""

from __future__ import annotations

import random
import re

from .problems import Problem, Step, apply_op

STYLES = ("step", "terse", "verbose", "mistake")

# The long-winded style of a large teacher: an opening, a lead before every equation and a closing sentence,
# none of which says which fact of the question a step uses. Numbers appear only in the equations and the
# closing sentence, so the teacher's grounding tool (which writes the next solution equation when the teacher
# starts a number) keeps the style intact.
# (An opening that began like a lead, "The amount changes, so we follow it from the start.", was the teacher's
# favourite; the student trained on those rationales scored 45% against 56% for gold rationales to the same
# questions, where it was one opening of three: no opening may now read like a step.)
OPENINGS = ("Let us work through the question one fact at a time.", "We go slowly and think about every sentence.",
            "We read the question from its first sentence to its last.")
LEADS = ("The amount changes, so we compute", "Something happens next, so we compute", "It changes again, so we compute")
CLOSE = ("We used every fact we were given, so the final answer is {r}.", "Every sentence has been used, so the answer is {r}.")
MISTAKE = {
    "+": ("Mistake to avoid: forgetting the {n} that are added.", "Remember: new {n} add to the total."),
    "-": ("Mistake to avoid: forgetting the {n} that are removed.", "Remember: {n} that leave must be subtracted."),
    "*": ("Mistake to avoid: adding instead of multiplying.", "Remember: a rate times a time gives a total."),
    "/": ("Mistake to avoid: multiplying when things are shared.", "Remember: sharing equally means dividing."),
}
MISTAKE_PREFIXES = ("Mistake to avoid:", "Remember:")

EQUATION = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")
FINAL = re.compile(r"####\s?(\d+)\s*$")
_NOUN = re.compile(r"How many (\w+)")


def _noun(problem: Problem) -> str:
    m = _NOUN.search(problem.question)
    return m.group(1) if m else "parts"


def render_rationale(problem: Problem, style: str, rng: random.Random) -> str:
    eqs = [s.equation + "." for s in problem.steps]
    final = f"#### {problem.answer}"
    n = _noun(problem)
    if style == "terse":
        return final
    if style == "step":
        return " ".join(eqs + [final])
    if style == "mistake":
        op = rng.choice([s.op for s in problem.steps])
        return " ".join([rng.choice(MISTAKE[op]).format(n=n)] + eqs + [final])
    if style == "verbose":
        parts = [rng.choice(OPENINGS)] + [f"{rng.choice(LEADS)} {eq}" for eq in eqs]
        parts.append(rng.choice(CLOSE).format(r=problem.answer))
        return " ".join(parts + [final])
    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


def parse_rationale(text: str) -> list[Step] | None:
    """The equations of a rationale as written (results unchecked); None unless it ends in ``#### n``."""
    if not FINAL.search(text.strip()):
        return None
    return [Step(int(a), op, int(b), int(r)) for a, op, b, r in EQUATION.findall(text)]


def classify_style(text: str) -> str:
    text = text.strip()
    if any(p in text for p in MISTAKE_PREFIXES):
        return "mistake"
    if not EQUATION.search(text):
        return "terse"
    # Strip equations and the final answer: whatever words remain are filler.
    rest = FINAL.sub("", EQUATION.sub("", text))
    return "verbose" if re.search(r"[A-Za-z]", rest) else "step"


def check_rationale(problem: Problem, text: str) -> dict:
    final = FINAL.search(text.strip())
    answer = int(final.group(1)) if final else None
    steps = parse_rationale(text) or []
    known = {int(x) for x in re.findall(r"\d+", problem.question)}
    steps_correct = True
    for s in steps:
        if apply_op(s.a, s.op, s.b) != s.result or s.a not in known or s.b not in known:
            steps_correct = False
        known.add(s.result)
    return {
        "well_formed": final is not None,
        "answer": answer,
        "answer_correct": answer == problem.answer,
        "n_steps": len(steps),
        "steps_correct": steps_correct,
        "style": classify_style(text),
    }
