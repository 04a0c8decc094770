"""Stage `generate` (ARTE step 4): the aligned teacher, and the original one with the same budget,
write the training data; and what alignment changed is measured on held-out seeds."""

from __future__ import annotations

import statistics
from collections import Counter

from ..config import RunConfig
from ..evaluate import binomial_stderr, student_tools
from ..models import load_model
from ..parallel import run_jobs, worker_count
from ..rundir import RunDir, read_jsonl, write_jsonl
from ..scoring import one_shot_accuracy
from ..tasks import load_task
from ..tasks.base import Example
from ..teaching import draft_questions, write_rationales
from .align import load_teacher
from .elicit import elicit_seeds, held_out_questions

TEACHERS = ("original", "aligned")


def tailored_data(cfg: RunConfig, task, teacher, seeds, exclude, seed: int) -> tuple[list[dict], dict]:
    """Draft questions, write greedy rationales (plain prompt), keep answer-consistent ones."""
    gc = cfg.generate
    sampling = cfg.elicit.model_copy(update={"temperature": gc.question_temperature, "batch_size": gc.batch_size})
    questions, filt, raw = draft_questions(teacher.model, teacher.tokenizer, task, seeds, int(gc.examples * 1.25),
                                           sampling, seed, exclude=exclude, max_rounds=8)
    drafts = write_rationales(teacher.model, teacher.tokenizer, task, questions, sampling, techniques=[None],
                              temperature=gc.rationale_temperature, seed=seed, description="writing training data")
    kept = [d for d in drafts if d["correct"]][: gc.examples]
    rows = [{"prompt": task.prompt(d["question"]), "completion": " " + d["rationale"], **d} for d in kept]
    return rows, {"raw_questions": raw, "questions": len(questions), "dropped_questions": dict(filt.dropped),
                  "rationales": len(drafts), "inconsistent_dropped": len(drafts) - sum(d["correct"] for d in drafts),
                  "examples": len(rows)}


def compare_on_held_out(cfg: RunConfig, task, teacher, student, held_out_seeds, preference, seed: int) -> dict:
    gc = cfg.generate
    sampling = cfg.elicit.model_copy(update={"temperature": gc.question_temperature})
    questions, filt, raw = draft_questions(teacher.model, teacher.tokenizer, task, held_out_seeds,
                                           gc.compare_questions, sampling, seed + 7,
                                           exclude=held_out_questions(task))
    drafts = write_rationales(teacher.model, teacher.tokenizer, task, questions, sampling, techniques=[None],
                              temperature=gc.rationale_temperature, seed=seed, description="held-out drafts")
    usable = [d for d in drafts if d["well_formed"]]
    scores = one_shot_accuracy(student.model, student.tokenizer, task, [(d["question"], d["rationale"]) for d in usable],
                               preference, max_new_tokens=cfg.prefer.max_new_tokens,
                               batch_size=cfg.prefer.batch_size, tools=student_tools(cfg.evaluate.calculator, task),
                               description="scoring held-out drafts")
    mean = statistics.mean(scores) if scores else 0.0
    # sampling error of the mean score: spread across drafts plus binomial noise within each
    spread = statistics.stdev(scores) / len(scores) ** 0.5 if len(scores) > 1 else binomial_stderr(mean, len(preference))
    styles = Counter(task.style_of(d["rationale"]) for d in usable) if task.style_of else {}
    return {"mean_preference_score": round(mean, 4), "stderr": round(spread, 4), "drafts": len(drafts),
            "well_formed_question_share": round(len(questions) / max(1, raw), 4),
            "well_formed_rationale_share": round(len(usable) / max(1, len(drafts)), 4),
            "correct_share": round(sum(d["correct"] for d in drafts) / max(1, len(drafts)), 4),
            "mean_rationale_chars": round(statistics.mean(len(d["rationale"]) for d in drafts), 1) if drafts else 0,
            "style_mix": {k: round(v / max(1, len(usable)), 3) for k, v in sorted(styles.items())}}


def _teacher_data(cfg: RunConfig, run_dir: RunDir, which: str) -> tuple[list[dict], dict, dict]:
    task = load_task(cfg.task)
    student = load_model(cfg.student, cfg.device)
    seeds, held_out = elicit_seeds(task)
    exclude = held_out_questions(task) + [s.question for s in task.seed]
    preference = [Example(r["question"], r["answer"]) for r in
                  read_jsonl(run_dir.stage_dir("prefer") / "preference_set.jsonl")][: cfg.generate.compare_preference]
    teacher = load_teacher(cfg, run_dir) if which == "aligned" else load_model(cfg.teacher, cfg.device)
    rows, data = tailored_data(cfg, task, teacher, task.seed, exclude, cfg.seed)
    return rows, data, compare_on_held_out(cfg, task, teacher, student, held_out, preference, cfg.seed)


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("generate")
    workers = worker_count(cfg.device, len(TEACHERS), cfg.workers)
    results = run_jobs(_teacher_data, {which: (cfg, run_dir, which) for which in TEACHERS}, workers,
                       f"generate: {len(TEACHERS)} teachers, {workers} at a time")
    metrics = {"data": {w: results[w][1] for w in TEACHERS}, "held_out": {w: results[w][2] for w in TEACHERS}}
    # The comparison is only fair at the same data budget: both sets are cut to the smaller one.
    budget = min(len(results[w][0]) for w in TEACHERS)
    for which in TEACHERS:
        write_jsonl(folder / f"{which}.jsonl", results[which][0][:budget])
    metrics["budget"] = budget
    metrics["workers"] = workers
    return {"metrics": metrics}
