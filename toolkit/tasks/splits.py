"""How the ARTE stages split a task's seed questions, and which questions drafting must avoid."""

from __future__ import annotations


def elicit_seeds(task):
    """Seeds for elicitation; the other half is held out to measure what alignment changed."""
    half = max(1, len(task.seed) // 2)
    return task.seed[:half], task.seed[half:] or task.seed[:half]


def held_out_questions(task) -> list[str]:
    return [ex.question for ex in task.preference + task.test]
