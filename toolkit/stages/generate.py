"""Stage `generate` (ARTE step 4): each aligned teacher (one per `align.seeds`), and the original one with
the same budget, write the training data; and what alignment changed is measured on held-out seeds."""

from __future__ import annotations

from ..config import RunConfig
from ..models import load_model
from ..parallel import run_jobs, worker_count
from ..rundir import RunDir, read_jsonl, write_jsonl
from ..tailored import compare_on_held_out, data_teachers, tailored_data, teacher_seed_of
from ..tasks import load_task
from ..tasks.base import Example
from ..tasks.splits import elicit_seeds, held_out_questions
from ..teacher import load_teacher


def _teacher_data(cfg: RunConfig, run_dir: RunDir, which: str) -> tuple[list[dict], dict, dict]:
    task = load_task(cfg.task)
    student = load_model(cfg.student, cfg.device)
    seeds, held_out = elicit_seeds(task, cfg.elicit.seeds_per_prompt)
    exclude = held_out_questions(task) + [s.question for s in task.seed]
    preference = [Example(r["question"], r["answer"]) for r in
                  read_jsonl(run_dir.stage_dir("prefer") / "preference_set.jsonl")][: cfg.generate.compare_preference]
    teacher_seed = teacher_seed_of(which)
    teacher = (load_model(cfg.teacher, cfg.device) if teacher_seed is None
               else load_teacher(cfg, run_dir, teacher_seed=teacher_seed))
    seed = cfg.seed + (teacher_seed or 0)  # a teacher-side seed also samples its teacher's data
    rows, data = tailored_data(cfg, task, teacher, task.seed, exclude, seed)
    return rows, data, compare_on_held_out(cfg, task, teacher, student, held_out, preference, seed)


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("generate")
    teachers = data_teachers(cfg)
    workers = worker_count(cfg.device, len(teachers), cfg.workers)
    results = run_jobs(_teacher_data, {which: (cfg, run_dir, which) for which in teachers}, workers,
                       f"generate: {len(teachers)} teachers, {workers} at a time")
    metrics = {"data": {w: results[w][1] for w in teachers}, "held_out": {w: results[w][2] for w in teachers}}
    # The comparison is only fair at the same data budget: every set is cut to the smallest one.
    budget = min(len(results[w][0]) for w in teachers)
    for which in teachers:
        write_jsonl(folder / f"{which}.jsonl", results[which][0][:budget])
    metrics["budget"] = budget
    metrics["workers"] = workers
    return {"metrics": metrics}
