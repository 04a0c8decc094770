"""Stage `ablation`: what ARTE bought. The same student, SFT on the original teacher's data vs the
aligned teacher's data (same budget, same recipe as `distill`), over several seeds."""

from __future__ import annotations

import statistics

from ..config import RunConfig
from ..rundir import RunDir
from .distill import distill_and_evaluate
from .generate import TEACHERS


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("ablation")
    out = {}
    for teacher in TEACHERS:
        accuracies = []
        for i in range(cfg.distill.ablation_seeds):
            if teacher == "aligned" and i == 0:  # the `distill` stage's run: same data, recipe and seed
                accuracies.append(run_dir.record("distill")["metrics"]["student_fp32"]["accuracy"])
                continue
            _, _, _, result = distill_and_evaluate(cfg, run_dir, teacher, cfg.seed + i, folder / "trainer",
                                                   cfg.distill.qat)
            accuracies.append(round(result["accuracy"], 4))
        out[f"{teacher}_teacher"] = {"mean": round(statistics.mean(accuracies), 4),
                                     "std": round(statistics.stdev(accuracies), 4) if len(accuracies) > 1 else 0.0,
                                     "seeds": accuracies}
    before = run_dir.record("baseline")
    if before:
        out["student_before"] = before["metrics"]["student_before"]["accuracy"]
    return {"metrics": out}
