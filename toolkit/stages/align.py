"""Stage `align` (ARTE step 3): DPO on the teacher, LoRA adapter, toward what the student learns from.

With `align.seeds` > 1 the same preference data aligns several teachers from different seeds (pairs
sampled, adapter initialised and data ordered by each): the ablation measures ARTE's effect over them.
"""

from __future__ import annotations

import shutil

from ..arte import build_pairs, elicit_drafts, score_drafts
from ..config import RunConfig
from ..dpo import train_dpo
from ..models import load_model
from ..parallel import run_jobs, worker_count
from ..rundir import RunDir, read_jsonl, write_jsonl
from ..tasks import load_task
from ..teacher import adapters, align_folder, load_teacher


def _summary(pairs: list[dict], trainer, history: list[dict]) -> dict:
    margins = [h.get("rewards/margins") for h in history]
    return {"pairs": {"question": sum(p["kind"] == "question" for p in pairs),
                      "rationale": sum(p["kind"] == "rationale" for p in pairs)},
            "steps": trainer.state.global_step,
            "loss": [round(h["loss"], 4) for h in history],
            "reward_margin": [round(m, 4) for m in margins if m is not None],
            "reward_accuracy": [round(h["rewards/accuracies"], 4) for h in history if "rewards/accuracies" in h]}


def further_round(cfg: RunConfig, run_dir: RunDir, task, student, preference, number: int,
                  teacher_seed: int = 0) -> dict:
    """ARTE again from the aligned teacher: elicit, score on the same preference set, pair, DPO."""
    folder = align_folder(run_dir, teacher_seed) / f"round{number}"
    folder.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed + teacher_seed
    stack = adapters(run_dir, teacher_seed)
    teacher = load_teacher(cfg, stack=stack)
    _, drafts, elicited, _ = elicit_drafts(cfg, task, teacher, seed + 1000 * number)
    del teacher
    question_scores, scored = score_drafts(cfg, task, student, drafts, preference)
    write_jsonl(folder / "scores.jsonl", drafts)
    pairs = build_pairs(cfg, task, drafts, question_scores, seed + number)
    out = {"round": number, "drafts": elicited["rationales"], "mean_score": scored["mean_score"],
           "score_by_technique": scored["score_by_technique"]}
    if not pairs:
        return {**out, "pairs": {"question": 0, "rationale": 0}, "skipped": "no preference pairs"}
    write_jsonl(folder / "pairs.jsonl", pairs)
    trainer, history = train_dpo(cfg, pairs, folder, stack=stack, seed=seed)
    return {**out, **_summary(pairs, trainer, history)}


def align_one(cfg: RunConfig, run_dir: RunDir, teacher_seed: int) -> dict:
    """Every round of one teacher-side seed: pairs from `prefer`'s scores, DPO, then any further rounds."""
    task = load_task(cfg.task)
    seed = cfg.seed + teacher_seed
    folder = align_folder(run_dir, teacher_seed)
    folder.mkdir(parents=True, exist_ok=True)
    drafts = read_jsonl(run_dir.stage_dir("prefer") / "scores.jsonl")
    question_scores = read_jsonl(run_dir.stage_dir("prefer") / "question_scores.jsonl")
    pairs = build_pairs(cfg, task, drafts, question_scores, seed)
    if not pairs:
        return {"pairs": {"question": 0, "rationale": 0}, "skipped": "no preference pairs",
                "loss": [], "reward_margin": [], "reward_accuracy": []}
    write_jsonl(folder / "pairs.jsonl", pairs)
    trainer, history = train_dpo(cfg, pairs, folder, seed=seed)
    metrics = _summary(pairs, trainer, history)
    if cfg.align.rounds > 1:
        from ..tasks.base import Example

        student = load_model(cfg.student, cfg.device)
        preference = [Example(r["question"], r["answer"])
                      for r in read_jsonl(run_dir.stage_dir("prefer") / "preference_set.jsonl")]
        metrics["rounds"] = [further_round(cfg, run_dir, task, student, preference, k, teacher_seed)
                             for k in range(2, cfg.align.rounds + 1)]
    return metrics


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("align")
    # an earlier run's adapters (rounds, teacher seeds) must not be merged in
    for stale in [folder / "adapter", *folder.glob("round*"), *folder.glob("seed*")]:
        shutil.rmtree(stale, ignore_errors=True)
    seeds = list(range(cfg.align.seeds))
    workers = worker_count(cfg.device, len(seeds), cfg.workers)
    results = run_jobs(align_one, {k: (cfg, run_dir, k) for k in seeds}, workers,
                       f"align: DPO from {len(seeds)} teacher seed(s), {workers} at a time")
    metrics = dict(results[0])  # the first seed's teacher writes the shipped student's data
    if results[0].get("skipped"):
        from ..progress import console

        console.print("[yellow]  no preference pairs (no scored drafts, or all scored alike): the teacher is not "
                      "aligned and `generate` uses the original teacher for both data sets[/yellow]")
    if len(seeds) > 1:
        metrics["teacher_seeds"] = {str(k): results[k] for k in seeds}
        metrics["workers"] = workers
    return {"metrics": metrics}
