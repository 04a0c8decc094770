"""How the ARTE stages split a task's seed questions, and which questions drafting must avoid."""

from __future__ import annotations


def elicit_seeds(task, per_prompt: int = 3):
    """Seeds for elicitation and seeds held out to measure what alignment changed.

    Halves when each half can fill a drafting prompt; a task with fewer seeds (a BBH CoT prompt has
    3) drafts from all of them and measures on the same ones: halving 3 seeds to 1 made every
    drafting prompt identical.
    """
    if len(task.seed) < 2 * per_prompt:
        return task.seed, task.seed
    half = len(task.seed) // 2
    return task.seed[:half], task.seed[half:]


def held_out_questions(task) -> list[str]:
    return [ex.question for ex in task.preference + task.test]
