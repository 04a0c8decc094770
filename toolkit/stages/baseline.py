"""Stage `baseline`: where teacher and student stand before any training.

Measures teacher and student accuracy on the test split and, for tasks with a question
parser (the embedded world), what ARTE needs to work: the share of well-formed drafted
questions and whether the student's one-shot accuracy depends on the demonstration's style
by more than its sampling noise.
"""

from __future__ import annotations

import json
import random
import statistics

from ..config import RunConfig
from ..evaluate import binomial_stderr, evaluate_model, student_tools, summary
from ..generation import ToolSettings, generate
from ..models import load_model
from ..rundir import RunDir
from ..scoring import one_shot_accuracy
from ..tasks import load_task


def _toy_probes(cfg: RunConfig, teacher, student, task, folder) -> dict:
    from ..toyworld.corpus import drafting_prompt
    from ..toyworld.problems import make_splits
    from ..toyworld.styles import STYLES, render_rationale

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


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("baseline")
    task = load_task(cfg.task)
    teacher = load_model(cfg.teacher, cfg.device)
    student = load_model(cfg.student, cfg.device)
    test = task.test[: cfg.evaluate.test_questions]
    ev = cfg.evaluate
    solutions = None
    tools = ToolSettings(calculator=cfg.elicit.calculator, grounding=False)
    if task.name == "toy-arith":
        from ..toyworld.problems import parse_question

        solutions = [[s.equation for s in parse_question(ex.question).steps] for ex in test]
        tools.grounding = True
    results = {
        "teacher": evaluate_model(teacher.model, teacher.tokenizer, task, test, max_new_tokens=ev.max_new_tokens,
                                  batch_size=ev.batch_size, description="teacher on test"),
        "teacher_with_tools": evaluate_model(teacher.model, teacher.tokenizer, task, test, tools=tools,
                                             solutions=solutions, max_new_tokens=ev.max_new_tokens,
                                             batch_size=ev.batch_size, description="teacher+tools on test"),
        "student_before": evaluate_model(student.model, student.tokenizer, task, test,
                                         max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                                         tools=student_tools(ev.calculator, task),
                                         description="student on test"),
    }
    with open(folder / "completions.jsonl", "w") as handle:
        for i, ex in enumerate(test):
            handle.write(json.dumps({"question": ex.question, "gold": ex.answer,
                                     **{k: r["completions"][i] for k, r in results.items()}}) + "\n")
    metrics = {k: summary(r) for k, r in results.items()}
    if task.solver is not None and task.name == "toy-arith":
        metrics["world"] = _toy_probes(cfg, teacher, student, task, folder)
    (folder / "world_metrics.json").write_text(json.dumps(metrics, indent=2))
    return {"metrics": metrics}
