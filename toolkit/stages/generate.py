"""Stage `generate` (ARTE step 4): each aligned teacher (one per `align.seeds`), and the original one with
the same budget, write the training data; and what alignment changed is measured on held-out seeds.

With `generate.questions=original_teacher` (the default) the original teacher drafts the questions once and
every teacher writes rationales to them; with `each_teacher` every teacher drafts its own."""

from __future__ import annotations

from collections import Counter

from ..config import RunConfig
from ..models import load_model
from ..parallel import run_jobs, worker_count
from ..rundir import RunDir, read_jsonl, write_jsonl
from ..tailored import (ALIGNED, VERIFIED_GOLD, compare_on_held_out, data_teachers, tailored_data, teacher_seed_of,
                        training_questions, verified_rationales)
from ..tasks import load_task
from ..tasks.base import Example
from ..tasks.splits import elicit_seeds, held_out_questions
from ..teacher import load_teacher

# the original teacher drafts the training questions in this many parts, each from its own seed, side by side
# where there are cores for it: the questions then do not depend on how many processes draft them
DRAFT_PARTS = 2
COMPARED = ("original", ALIGNED)  # held-out drafts scored by the student: the base teacher and the shipped one


def _teacher(cfg: RunConfig, run_dir: RunDir, which: str):
    teacher_seed = teacher_seed_of(which)
    return (load_model(cfg.teacher, cfg.device) if teacher_seed is None
            else load_teacher(cfg, run_dir, teacher_seed=teacher_seed))


def _questions_wanted(cfg: RunConfig) -> int:
    return int(cfg.generate.examples * 1.25)  # some rationales will not match their answer


def _exclude(task) -> list[str]:
    return held_out_questions(task) + [s.question for s in task.seed]


def _draft(cfg: RunConfig, run_dir: RunDir, which: str, seed: int, wanted: int) -> tuple[list[Example], dict]:
    task = load_task(cfg.task)
    return training_questions(cfg, task, _teacher(cfg, run_dir, which), task.seed, _exclude(task), seed, wanted)


def _teacher_data(cfg: RunConfig, run_dir: RunDir, which: str, questions: list[Example] | None):
    """One teacher's rows (drafting its own questions when `questions` is None) and, for the compared teachers,
    what the student's one-shot score makes of its drafts from held-out seeds."""
    task = load_task(cfg.task)
    teacher = _teacher(cfg, run_dir, which)
    seed = cfg.seed + (teacher_seed_of(which) or 0)  # a teacher-side seed also samples its teacher's data
    drafted = {}
    if questions is None:
        questions, drafted = training_questions(cfg, task, teacher, task.seed, _exclude(task), seed,
                                                _questions_wanted(cfg))
    rows, data = tailored_data(cfg, task, teacher, questions, seed)
    compared = None
    if which in COMPARED:
        student = load_model(cfg.student, cfg.device)
        _, held_out = elicit_seeds(task, cfg.elicit.seeds_per_prompt)
        preference = [Example(r["question"], r["answer"]) for r in
                      read_jsonl(run_dir.stage_dir("prefer") / "preference_set.jsonl")][: cfg.generate.compare_preference]
        compared = compare_on_held_out(cfg, task, teacher, student, held_out, preference, seed)
    return rows, {**drafted, **data}, compared


def _shared_questions(cfg: RunConfig, run_dir: RunDir, workers: int) -> tuple[list[Example], dict]:
    """The original teacher's drafts for every teacher, in DRAFT_PARTS parts from their own seeds."""
    wanted = _questions_wanted(cfg)
    share = -(-wanted // DRAFT_PARTS)
    workers = min(workers, DRAFT_PARTS)
    parts = run_jobs(_draft, {k: (cfg, run_dir, "original", cfg.seed + 100 * k, share) for k in range(DRAFT_PARTS)},
                     workers, f"generate: the original teacher drafts {wanted} questions, {workers} at a time")
    seen, questions = set(), []
    for k in range(DRAFT_PARTS):
        for q in parts[k][0]:
            if q.question not in seen:  # two processes may draft the same question
                seen.add(q.question)
                questions.append(q)
    dropped = Counter()
    for _, counts in parts.values():
        dropped.update(counts["dropped_questions"])
    return questions[:wanted], {"raw_questions": sum(counts["raw_questions"] for _, counts in parts.values()),
                                "questions": min(len(questions), wanted), "drafted_by": "original",
                                "dropped_questions": dict(dropped)}


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("generate")
    teachers = data_teachers(cfg)
    workers = worker_count(cfg.device, len(teachers), cfg.workers)
    metrics = {"questions": cfg.generate.questions}
    questions = None
    if cfg.generate.questions == "original_teacher":
        questions, metrics["drafting"] = _shared_questions(cfg, run_dir, workers)
        write_jsonl(folder / "questions.jsonl", [{"question": q.question, "answer": q.answer} for q in questions])
    results = run_jobs(_teacher_data, {which: (cfg, run_dir, which, questions) for which in teachers}, workers,
                       f"generate: {len(teachers)} teachers write rationales, {workers} at a time")
    metrics["data"] = {w: results[w][1] for w in teachers}
    metrics["held_out"] = {w: results[w][2] for w in teachers if results[w][2] is not None}
    # The comparison is only fair at the same data budget: every set is cut to the smallest one.
    budget = min(len(results[w][0]) for w in teachers)
    for which in teachers:
        write_jsonl(folder / f"{which}.jsonl", results[which][0][:budget])
    metrics["budget"] = budget
    task = load_task(cfg.task)
    if task.gold_rationale is None and cfg.generate.gold_samples:
        rows, metrics["verified_gold"] = verified_rationales(cfg, task, _teacher(cfg, run_dir, "original"), cfg.seed)
        write_jsonl(folder / VERIFIED_GOLD, rows)
    metrics["workers"] = workers
    return {"metrics": metrics}
