"""Stage `ablation`: what ARTE bought. The same student, SFT on the original teacher's data vs each aligned
teacher's data (one per teacher-side seed, `align.seeds`), and on the task's gold rationales (the ceiling; to
the same training questions where the task can solve any question), with the same budget and recipe as
`distill`, over several student seeds; the difference aligned - original
is paired (same student seeds, same test questions) with a bootstrap interval over teacher seeds, student
seeds and questions. The trainings run side by side on a multi-core CPU (`edge_tailor.parallel`). With
`distill.compare_ptq`, also QAT against PTQ (`edge_tailor.qat_vs_ptq`)."""

from __future__ import annotations

import json
import statistics

from ..config import RunConfig
from ..distillation import CORRECT_FILE, GOLD, distill_and_evaluate, gold_rows, gold_source
from ..paired import paired_difference
from ..parallel import run_jobs, worker_count
from ..rundir import RunDir, write_json_atomic
from ..tailored import ALIGNED, aligned_arms


def _qat(cfg: RunConfig) -> bool:
    return cfg.distill.qat if cfg.distill.ablation_qat is None else cfg.distill.ablation_qat


def _correct(cfg: RunConfig, run_dir: RunDir, arm: str, seed: int) -> list[bool]:
    workdir = run_dir.stage_dir("ablation") / f"trainer-{arm}-{seed}"
    _, _, _, result = distill_and_evaluate(cfg, run_dir, arm, seed, workdir, _qat(cfg))
    return [bool(c) for c in result["correct"]]


def _summary(runs: list[list[bool]]) -> dict:
    accuracies = [round(sum(c) / len(c), 4) for c in runs]
    return {"mean": round(statistics.mean(accuracies), 4),
            "std": round(statistics.stdev(accuracies), 4) if len(accuracies) > 1 else 0.0, "seeds": accuracies}


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    if cfg.distill.ablation_seeds == 0:
        metrics = {"skipped": "distill.ablation_seeds is 0: no original-vs-aligned comparison was trained"}
    else:
        metrics = _teachers(cfg, run_dir)
    if cfg.distill.compare_ptq:
        from ..qat_vs_ptq import compare

        metrics["qat_vs_ptq"] = compare(cfg, run_dir, run_dir.stage_dir("ablation") / "qat_vs_ptq")
    return {"metrics": metrics}


def _teachers(cfg: RunConfig, run_dir: RunDir) -> dict:
    seeds = [cfg.seed + i for i in range(cfg.distill.ablation_seeds)]
    gold_examples = len(gold_rows(cfg, run_dir))
    aligned = aligned_arms(cfg)
    arms = ["original", *aligned, *([GOLD] if gold_examples else [])]
    # aligned at the run's seed is the `distill` stage's run (same data, seed and fake quantization), unless a
    # run made before distill kept its per-question results
    distilled = run_dir.stage_dir("distill") / CORRECT_FILE
    reuse = distilled.is_file() and _qat(cfg) == cfg.distill.qat
    jobs = {(arm, s): (cfg, run_dir, arm, s) for arm in arms for s in seeds
            if not (arm == ALIGNED and s == cfg.seed and reuse)}
    workers = worker_count(cfg.device, len(jobs), cfg.workers)
    results = run_jobs(_correct, jobs, workers, f"ablation: {len(jobs)} trainings, {workers} at a time")
    if reuse:
        results[ALIGNED, cfg.seed] = json.loads(distilled.read_text())
    correct = {arm: {s: results[arm, s] for s in seeds} for arm in arms}
    write_json_atomic(run_dir.stage_dir("ablation") / "correct.json",
                      {arm: {str(s): c for s, c in by_seed.items()} for arm, by_seed in correct.items()})
    by_teacher_seed = {k: correct[arm] for k, arm in enumerate(aligned)}
    out = {"original_teacher": _summary(list(correct["original"].values())),
           "aligned_teacher": {**_summary([c for arm in aligned for c in correct[arm].values()]),
                               "teacher_seeds": len(aligned), "student_seeds": len(seeds),
                               "by_teacher_seed": {str(k): _summary(list(runs.values()))
                                                   for k, runs in by_teacher_seed.items()}}}
    out["difference"] = paired_difference(by_teacher_seed if len(aligned) > 1 else correct[ALIGNED],
                                          correct["original"], seed=cfg.seed)
    if gold_examples:
        out["gold"] = {**_summary(list(correct[GOLD].values())), "examples": gold_examples,
                       "questions": gold_source(cfg, run_dir)}
        out["aligned_share_of_gold"] = round(out["aligned_teacher"]["mean"] / out["gold"]["mean"], 4) \
            if out["gold"]["mean"] else None
    else:
        out["gold"] = None  # the task has no gold rationales outside its test split
    before = run_dir.record("baseline")
    if before:
        out["student_before"] = before["metrics"]["student_before"]["accuracy"]
    out["fake_quantized"] = _qat(cfg)
    out["trainings"] = len(jobs)
    out["workers"] = workers
    return out
