"""Pretraining corpora of the embedded world, built from gold solutions of the task family.

Teacher documents teach the two things ARTE asks of a teacher: drafting new questions from
seed questions, and writing a rationale in a requested technique (or, with the instruction
erased, in its own default mix of styles: long-winded, as a large teacher writes). Student pages hold two solved questions in one
style, so the student learns to follow a one-shot demonstration's style in context.
"""

from __future__ import annotations

import random

from .problems import Problem
from .styles import STYLES, render_rationale

DRAFT_HEADER = "Questions:\n"
DRAFT_NEW = "New:\n"


def style_instruction(style: str) -> str:
    return f"Style: {style}"


def drafting_prompt(seed_questions: list[str]) -> str:
    """What the teacher sees when drafting: k seed questions, then it writes new `Q:` lines."""
    return DRAFT_HEADER + "".join(f"Q: {q}\n" for q in seed_questions) + DRAFT_NEW + "Q:"


def rationale_prompt(question: str, style: str | None) -> str:
    """A question, optionally with a technique instruction; the teacher continues after `A:`."""
    instruction = f"{style_instruction(style)}\n" if style else ""
    return f"Q: {question}\n{instruction}A:"


def teacher_documents(problems: list[Problem], rng: random.Random, n_docs: int, eos: str,
                      default_styles: dict[str, float]) -> list[str]:
    """Drafting documents and rationale documents; a rationale asked for without a technique instruction is
    written in ``default_styles`` proportions: the teacher's own way of writing, which alignment reshapes."""
    docs = []
    for _ in range(n_docs):
        if rng.random() < 0.35:
            k, m = rng.randint(2, 3), rng.randint(1, 3)
            chosen = rng.sample(problems, k + m)
            prompt = drafting_prompt([p.question for p in chosen[:k]])
            new = "\nQ:".join(f" {p.question}" for p in chosen[k:])
            docs.append(f"{prompt}{new}\n{eos}")
        else:
            problem = rng.choice(problems)
            instructed = rng.random() < 0.5
            style = rng.choice(STYLES) if instructed else rng.choices(list(default_styles),
                                                                      list(default_styles.values()))[0]
            prompt = rationale_prompt(problem.question, style if instructed else None)
            docs.append(f"{prompt} {render_rationale(problem, style, rng)}\n{eos}")
    return docs


def student_pages(problems: list[Problem], rng: random.Random, n_pages: int, eos: str) -> list[str]:
    pages = []
    for _ in range(n_pages):
        style = rng.choice(STYLES)
        pair = rng.sample(problems, 2)
        pages.append("".join(f"Q: {p.question}\nA: {render_rationale(p, style, rng)}\n" for p in pair) + eos)
    return pages
