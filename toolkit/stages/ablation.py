"""Stage `ablation`: what ARTE bought. The same student, SFT on the original teacher's data vs the
aligned teacher's data (same budget, same recipe as `distill`), over several seeds; the trainings
run side by side on a multi-core CPU (`edge_tailor.parallel`)."""

from __future__ import annotations

import statistics

from ..config import RunConfig
from ..distillation import distill_and_evaluate
from ..parallel import run_jobs, worker_count
from ..rundir import RunDir
from ..tailored import TEACHERS


def _accuracy(cfg: RunConfig, run_dir: RunDir, teacher: str, seed: int) -> float:
    workdir = run_dir.stage_dir("ablation") / f"trainer-{teacher}-{seed}"
    _, _, _, result = distill_and_evaluate(cfg, run_dir, teacher, seed, workdir, cfg.distill.qat)
    return round(result["accuracy"], 4)


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    jobs = {(teacher, cfg.seed + i): (cfg, run_dir, teacher, cfg.seed + i)
            for teacher in TEACHERS for i in range(cfg.distill.ablation_seeds)
            if not (teacher == "aligned" and i == 0)}  # that one is the `distill` stage's run: same data and seed
    workers = worker_count(cfg.device, len(jobs), cfg.workers)
    results = run_jobs(_accuracy, jobs, workers, f"ablation: {len(jobs)} trainings, {workers} at a time")
    results["aligned", cfg.seed] = run_dir.record("distill")["metrics"]["student_fp32"]["accuracy"]
    out = {}
    for teacher in TEACHERS:
        accuracies = [results[teacher, cfg.seed + i] for i in range(cfg.distill.ablation_seeds)]
        out[f"{teacher}_teacher"] = {"mean": round(statistics.mean(accuracies), 4),
                                     "std": round(statistics.stdev(accuracies), 4) if len(accuracies) > 1 else 0.0,
                                     "seeds": accuracies}
    before = run_dir.record("baseline")
    if before:
        out["student_before"] = before["metrics"]["student_before"]["accuracy"]
    out["workers"] = workers
    return {"metrics": out}
