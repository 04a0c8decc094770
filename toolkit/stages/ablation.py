"""Stage `ablation`: what ARTE bought. The same student, SFT on the original teacher's data vs the
aligned teacher's data (same budget, same recipe as `distill`), over several seeds.

The trainings are independent, so on a CPU they run side by side in worker processes, one per
`threads` cores: these tiny models do not speed up with more threads per process (measured 6x
slower at 2 threads), but two processes on two cores finish two trainings in the time of one."""

from __future__ import annotations

import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed

import torch
from tqdm.auto import tqdm

from ..config import RunConfig
from ..models import pick_device
from ..rundir import RunDir
from .distill import distill_and_evaluate
from .generate import TEACHERS


def _quiet_worker(threads: int) -> None:
    os.environ["TQDM_DISABLE"] = "1"  # one progress bar (the parent's) instead of interleaved ones
    torch.set_num_threads(threads)


def _accuracy(cfg: RunConfig, run_dir: RunDir, teacher: str, seed: int) -> float:
    workdir = run_dir.stage_dir("ablation") / f"trainer-{teacher}-{seed}"
    _, _, _, result = distill_and_evaluate(cfg, run_dir, teacher, seed, workdir, cfg.distill.qat)
    return round(result["accuracy"], 4)


def worker_count(cfg: RunConfig, jobs: int) -> int:
    if cfg.distill.ablation_workers:
        return min(jobs, cfg.distill.ablation_workers)
    if pick_device(cfg.device).type == "cuda":
        return 1
    return max(1, min(jobs, (os.cpu_count() or 1) // max(1, torch.get_num_threads())))


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    jobs = [(teacher, cfg.seed + i) for teacher in TEACHERS for i in range(cfg.distill.ablation_seeds)
            if not (teacher == "aligned" and i == 0)]  # the `distill` stage's run: same data, recipe and seed
    results = {("aligned", cfg.seed): run_dir.record("distill")["metrics"]["student_fp32"]["accuracy"]}
    workers = worker_count(cfg, len(jobs))
    bar = tqdm(total=len(jobs), desc=f"ablation: {len(jobs)} trainings on {workers} worker(s)", unit="run")
    if workers == 1:
        for teacher, seed in jobs:
            results[teacher, seed] = _accuracy(cfg, run_dir, teacher, seed)
            bar.update()
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_quiet_worker, initargs=(torch.get_num_threads(),)) as pool:
            futures = {pool.submit(_accuracy, cfg, run_dir, teacher, seed): (teacher, seed) for teacher, seed in jobs}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
    bar.close()
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
