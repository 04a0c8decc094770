"""A solver for BBH boolean_expressions ("not ( True ) and False is"): drafted questions get their
answer computed, not copied from a teacher that may be wrong, and malformed ones are rejected; and the
task's worked solution of any question (`boolean_rationale`), the ablation's gold ceiling.

Written by hand because the expressions are a five-token language (True, False, not, and, or,
parentheses) and Python's ``eval`` must never see teacher text.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\s*(True|False|not|and|or|\(|\))")


def _tokens(text: str) -> list[str] | None:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            return None
        out.append(m.group(1))
        pos = m.end()
    return out


def solve_boolean(question: str) -> str | None:
    """"True"/"False" for an expression ending in " is" (the task's form), None for anything else."""
    body = question.strip()
    if not body.endswith(" is"):
        return None
    tokens = _tokens(body[:-3])
    if not tokens or len(tokens) > 64:
        return None
    pos = 0

    # precedence as the task's CoT prompt states it: not > and > or
    def chain(op: str, operand) -> bool:
        nonlocal pos
        value = operand()
        while pos < len(tokens) and tokens[pos] == op:
            pos += 1
            right = operand()
            value = (value or right) if op == "or" else (value and right)
        return value

    def expr() -> bool:
        return chain("or", lambda: chain("and", factor))

    def factor() -> bool:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError("unexpected end")
        token = tokens[pos]
        pos += 1
        if token == "not":
            return not factor()
        if token == "(":
            value = expr()
            if pos >= len(tokens) or tokens[pos] != ")":
                raise ValueError("unclosed parenthesis")
            pos += 1
            return value
        if token in ("True", "False"):
            return token == "True"
        raise ValueError(f"unexpected {token}")

    try:
        value = expr()
    except ValueError:
        return None
    return str(value) if pos == len(tokens) else None


# ---------------------------------------------------------------------------------------------
# Worked solutions: one operator applied per step, in the CoT prompt's order (brackets first, then
# not, and, or), each step the whole expression rewritten, so a small student copies and rewrites locally.

RULES = ('Remember that (i) expressions inside brackets are always evaluated first and that (ii) the order of '
         'operations from highest priority to lowest priority is "not", "and", "or", respectively.')
STYLES = ("step", "verbose", "terse")  # the renderings `boolean_rationale` writes (learnability arms)


def _drop_trivial_brackets(tokens: list[str]) -> list[str]:
    out = list(tokens)
    i = 0
    while i + 2 < len(out):
        if out[i] == "(" and out[i + 2] == ")" and out[i + 1] in ("True", "False"):
            out[i:i + 3] = [out[i + 1]]
            i = max(0, i - 1)
        else:
            i += 1
    return out


def _reduce_once(tokens: list[str]) -> tuple[list[str], str, str]:
    """(tokens after one operator is applied, the operation as written, its value)."""
    close = tokens.index(")") if ")" in tokens else len(tokens)
    open_ = max((i for i in range(close) if tokens[i] == "("), default=-1)
    lo, hi = open_ + 1, close  # the innermost bracket's contents (or the whole expression)
    seg = tokens[lo:hi]
    values = ("True", "False")
    nots = [i for i in range(len(seg) - 1) if seg[i] == "not" and seg[i + 1] in values]
    if nots:
        i = nots[-1]
        value = str(seg[i + 1] != "True")
        return tokens[:lo + i] + [value] + tokens[lo + i + 2:], f"not {seg[i + 1]}", value
    for op in ("and", "or"):
        for i in range(1, len(seg) - 1):
            if seg[i] == op and seg[i - 1] in values and seg[i + 1] in values:
                a, b = seg[i - 1] == "True", seg[i + 1] == "True"
                value = str((a and b) if op == "and" else (a or b))
                return (tokens[:lo + i - 1] + [value] + tokens[lo + i + 2:], f"{seg[i - 1]} {op} {seg[i + 1]}",
                        value)
    raise ValueError("no operator to apply")  # unreachable for an expression solve_boolean accepts


def boolean_steps(question: str) -> list[tuple[str, str, str]] | None:
    """(operation, its value, the whole expression after it) per step; None where the question is not an
    expression the solver accepts."""
    if solve_boolean(question) is None:
        return None
    tokens = _drop_trivial_brackets(_tokens(question.strip()[:-3]))
    steps = []
    while len(tokens) > 1:
        tokens, operation, value = _reduce_once(tokens)
        tokens = _drop_trivial_brackets(tokens)
        steps.append((operation, value, " ".join(tokens)))
    return steps


def boolean_rationale(question: str, style: str = "step") -> str | None:
    """The task's worked solution in one of STYLES, ending in the ARTE answer tag: `step` rewrites the
    expression once per operator, `verbose` says the same in sentences after the CoT prompt's rules, `terse`
    gives the answer alone."""
    steps = boolean_steps(question)
    if steps is None:
        return None
    answer = solve_boolean(question)
    end = f"So the answer is <ans>{answer}</ans>."
    if style == "terse" or not steps:
        return end
    if style == "step":
        chain = " = ".join([question.strip()[:-3].strip()] + [after for _, _, after in steps])
        return f"{chain}. {end}"
    if style == "verbose":
        lines = [f"{'First' if k == 0 else 'Next'}, {op} is {value}, so the expression becomes {after}."
                 for k, (op, value, after) in enumerate(steps)]
        return " ".join([RULES, "We apply one operation at a time.", *lines, end])
    raise ValueError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
