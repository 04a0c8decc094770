"""The embedded default world as a ``Task``: toy factory arithmetic in a ``Q: .. A: ..`` layout."""

from __future__ import annotations

import random
from typing import Callable

from ..tasks.base import Example, PromptStyle, Task
from .corpus import drafting_prompt
from .problems import TASK_OP_WEIGHTS, make_splits, parse_question, sample_problems
from .styles import classify_style, render_rationale

# The model continues after "A:" with " " + rationale.
TOY_STYLE = PromptStyle(demo="Q: {question}\nA: {rationale}\n", query="Q: {question}\nA:", answer_open="#### ", answer_close="",
                        stop=("\n",))

DEFAULT_SIZES = {"seed": 32, "preference": 160, "validation": 160, "test": 1000}
# ARTE's reasoning techniques here: step-by-step, answer only, long-winded. The common-mistake style stays in the
# world for TeacherLM annotation (annotation_prompts) but is no technique: the student's one-shot accuracy rated
# it above every other (42 of 43 questions) while SFT on it taught less (500 gold rows, 60 steps: 61.6% against
# 71.2% step-by-step), so a teacher aligned with it wrote data worth 66% of the gold ceiling.
TECHNIQUES = {style: f"Style: {style}" for style in ("step", "terse", "verbose")}


def _solve(question: str) -> str | None:
    p = parse_question(question)
    return str(p.answer) if p else None


def _solution_steps(question: str) -> list[str] | None:
    p = parse_question(question)
    return [s.equation for s in p.steps] if p else None


def _baseline_probe(cfg, teacher, student, task: Task, folder) -> dict:
    from .probes import baseline_probe  # the generation stack loads only when `baseline` asks

    return baseline_probe(cfg, teacher, student, task, folder)


def toy_examples(seed: int = 0, sizes: dict | None = None) -> dict[str, list[Example]]:
    """Every split (validation included, which ``Task`` has no field for) as examples."""
    rng = random.Random(seed)  # the step style draws nothing; kept for the renderer's signature
    splits = make_splits(seed, sizes or DEFAULT_SIZES)
    return {
        name: [Example(p.question, str(p.answer), rationale=render_rationale(p, "step", rng)) for p in problems]
        for name, problems in splits.items()
    }


def fresh_examples(stream: str, n: int, taken: frozenset[str], style: str | dict[str, float] = "step",
                   op_weights=TASK_OP_WEIGHTS, rng_seed: int = 0) -> list[Example]:
    """``n`` problems from their own sample stream, none in ``taken``, with gold rationales in ``style`` (a
    {style: weight} mix draws each example's style)."""
    rng = random.Random(rng_seed)
    mix = style if isinstance(style, dict) else {style: 1.0}
    return [Example(p.question, str(p.answer),
                    rationale=render_rationale(p, rng.choices(list(mix), list(mix.values()))[0], rng))
            for p in sample_problems(stream, n, op_weights, exclude=taken)]


def _gold_rationale(question: str) -> str | None:
    p = parse_question(question)
    return render_rationale(p, "step", random.Random(0)) if p else None  # the step style draws nothing


def toy_gold(seed: int, taken: frozenset[str]) -> Callable[[int], list[Example]]:
    """``n`` fresh problems with step-by-step gold rationales, from their own stream, none in any split."""
    return lambda n: fresh_examples(f"toy:{seed}:gold", n, taken, rng_seed=seed)


def toy_task(seed: int = 0, sizes: dict | None = None) -> Task:
    ex = toy_examples(seed, sizes)
    taken = frozenset(e.question for split in ex.values() for e in split)
    return Task(
        name="toy-arith",
        description="Factory word problems with whole-number arithmetic.",
        answer_kind="number",
        seed=ex.get("seed", []),
        preference=ex.get("preference", []),
        test=ex.get("test", []),
        style=TOY_STYLE,
        techniques=dict(TECHNIQUES),
        solver=_solve,
        solution_steps=_solution_steps,
        drafting="lines",
        drafting_prompt=drafting_prompt,
        style_of=classify_style,
        # The toy teacher never saw TeacherLM's prompts; its nearest skills stand in for them:
        # its "mistake" style opens with a fundamentals / common-mistake line.
        annotation_prompts={"C": "Q: {question}\nStyle: step\nA:", "M": "Q: {question}\nStyle: mistake\nA:",
                            "F": "Q: {question}\nStyle: mistake\nA:"},
        source="edge_tailor.toyworld.problems",
        calculator=True,
        baseline_probe=_baseline_probe,
        gold_examples=toy_gold(seed, taken),
        gold_rationale=_gold_rationale,
    )
