"""Stage `generate` (ARTE step 4): the aligned teacher, and the original one with the same budget,
write the training data; and what alignment changed is measured on held-out seeds."""

from __future__ import annotations

from ..config import RunConfig
from ..models import load_model
from ..parallel import run_jobs, worker_count
from ..rundir import RunDir, read_jsonl, write_jsonl
from ..tailored import TEACHERS, compare_on_held_out, tailored_data
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
