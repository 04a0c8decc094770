"""A solver for BBH boolean_expressions ("not ( True ) and False is"): drafted questions get their
answer computed, not copied from a teacher that may be wrong, and malformed ones are rejected.

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
