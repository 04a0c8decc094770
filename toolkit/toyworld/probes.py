"""What `baseline` measures in the embedded world before any training (the task's `baseline_probe`):
the share of well-formed questions the teacher drafts, and whether the student's one-shot accuracy
depends on the demonstration's style by more than its sampling noise (what ARTE needs to work)."""

from __future__ import annotations

import json
import random
import statistics

from ..config import RunConfig
from ..evaluate import binomial_stderr, student_tools
from ..generation import generate
from ..scoring import one_shot_accuracy
from .corpus import drafting_prompt
from .problems import make_splits
from .styles import STYLES, render_rationale


def baseline_probe(cfg: RunConfig, teacher, student, task, folder) -> dict:
    """Drafting and one-shot style signal; the teacher's drafts are kept in `folder`/drafts.json."""
    rng = random.Random(cfg.seed)
    seeds = [ex.question for ex in task.seed]
    prompts = [drafting_prompt(rng.sample(seeds, cfg.elicit.seeds_per_prompt)) for _ in range(32)]
    texts = generate(teacher.model, teacher.tokenizer, prompts, max_new_tokens=cfg.elicit.max_new_tokens,
                     temperature=cfg.elicit.temperature, batch_size=cfg.elicit.batch_size, seed=cfg.seed,
                     description="teacher drafting")
    drafted = [line.strip() for t in texts for line in ("Q:" + t).split("\n") if line.startswith("Q:")]
    drafted = [q[2:].strip() for q in drafted if q[2:].strip()]
    well_formed = sum(task.solver(q) is not None for q in drafted)

    # One-shot signal: demos of each style on the same seed problems, scored on the preference set.
    problems = make_splits(cfg.task.seed, {"seed": len(task.seed)})["seed"][:4]
    questions = task.preference[: cfg.prefer.preference_questions]
    by_style = {}
    for style in STYLES:
        demos = [(p.question, render_rationale(p, style, rng)) for p in problems]
        by_style[style] = one_shot_accuracy(student.model, student.tokenizer, task, demos, questions,
                                            max_new_tokens=cfg.prefer.max_new_tokens, batch_size=cfg.prefer.batch_size,
                                            tools=student_tools(cfg.evaluate.calculator, task),
                                            description=f"one-shot {style}")
    means = {s: statistics.mean(v) for s, v in by_style.items()}
    noise = binomial_stderr(statistics.mean(means.values()), len(questions))
    (folder / "drafts.json").write_text(json.dumps({"prompts": prompts, "outputs": texts}, indent=1))
    return {
        "drafted_questions": len(drafted), "well_formed_share": round(well_formed / max(1, len(drafted)), 4),
        "one_shot_by_style": {s: {"mean": round(m, 4), "scores": by_style[s]} for s, m in means.items()},
        "one_shot_spread": round(max(means.values()) - min(means.values()), 4),
        "one_shot_sampling_stderr": round(noise, 4), "preference_questions": len(questions),
    }
