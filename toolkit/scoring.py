"""ARTE's preference signal: a student's one-shot in-context accuracy with a draft as the demo."""

from __future__ import annotations

from typing import Sequence

from .generation import generate
from .tasks.base import Example, Task


def one_shot_accuracy(model, tokenizer, task: Task, demos: Sequence[tuple[str, str]],
                      questions: Sequence[Example], *, max_new_tokens: int, batch_size: int,
                      description: str = "scoring drafts") -> list[float]:
    """For each (question, rationale) demo: the student's greedy accuracy on `questions`."""
    prompts = [task.prompt(ex.question, [demo]) for demo in demos for ex in questions]
    completions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           description=description)
    n = len(questions)
    scores = []
    for i in range(len(demos)):
        chunk = completions[i * n:(i + 1) * n]
        scores.append(sum(task.is_correct(c, ex) for c, ex in zip(chunk, questions)) / n)
    return scores
