"""TeacherLM annotation: for each sample of an existing dataset, given its answer, the teacher
writes fundamentals (F), a chain of thought (C) and common mistakes (M); the augmented sample
joins them in a chosen order (C, CM, CMF, FCM, ...), as in He et al. (PAPERS.md)."""

from __future__ import annotations

from typing import Sequence

from .errors import InputError
from .generation import generate
from .tasks.base import Example, Task

# The paper's prompt: `Q: {question} {options} A: The answer is ({x}).` then one suffix per kind.
TEACHERLM_PROMPT = "Q: {question} A: The answer is {answer}.{suffix}"
SUFFIXES = {"F": " The fundamental of this question is:", "C": " Let's think step by step.",
            "M": " The common mistakes are:"}
LABELS = {"F": "Fundamentals:", "C": "Reasoning:", "M": "Common mistakes:"}


def check_order(order: str) -> str:
    if not order or any(k not in SUFFIXES for k in order) or len(set(order)) != len(order):
        raise InputError("config", "elicit.annotate_order",
                         f"'{order}' must be letters from C, M, F, each at most once (e.g. C, CM, CMF, FCM)")
    return order


def annotation_prompt(task: Task, example: Example, kind: str) -> str:
    if task.annotation_prompts:
        return task.annotation_prompts[kind].format(question=example.question, answer=example.answer)
    return TEACHERLM_PROMPT.format(question=example.question, answer=example.answer, suffix=SUFFIXES[kind])


def compose(task: Task, example: Example, notes: dict[str, str], order: str) -> str:
    """The augmented completion: annotations in `order`, then the answer in the task's format."""
    body = " ".join(f"{LABELS[k]} {notes[k]}" for k in order)
    return f"{body} {task.style.wrap_answer(example.answer)}"


def first_paragraph(text: str) -> str:
    """The annotation: the text up to its first blank line, after any blank lines it opens with.

    Real teachers often start with a newline or two; a "\n\n" stop string would end them there, empty
    (measured on SmolLM2: 26 of 26 annotations empty).
    """
    return text.strip().split("\n\n", 1)[0].strip()


def annotate(model, tokenizer, task: Task, examples: Sequence[Example], order: str, *, max_new_tokens: int,
             batch_size: int) -> tuple[list[dict], int]:
    """Annotated rows, and how many samples were dropped because one of their annotations came back empty."""
    order = check_order(order)
    jobs = [(ex, kind) for ex in examples for kind in order]
    texts = generate(model, tokenizer, [annotation_prompt(task, ex, k) for ex, k in jobs],
                     max_new_tokens=max_new_tokens, batch_size=batch_size, stop=task.style.stop,
                     description="annotating (TeacherLM)")
    notes: dict[str, dict[str, str]] = {}
    for (ex, kind), text in zip(jobs, texts):
        notes.setdefault(ex.question, {})[kind] = first_paragraph(text)
    kept = [ex for ex in examples if all(notes[ex.question][k] for k in order)]
    rows = [{"question": ex.question, "answer": ex.answer, **{f"annotation_{k}": notes[ex.question][k] for k in order},
             "order": order, "completion": compose(task, ex, notes[ex.question], order)} for ex in kept]
    return rows, len(examples) - len(kept)
