"""Stage `prefer` (ARTE step 2): score every draft by what this student learns from it.

The preference set is the most discriminative slice of the validation questions; a draft's
score s_r is the student's one-shot accuracy on it with the draft as the demonstration (or,
with scorer=influence, its local data influence); a question's score s_q is the mean over
its rationales.
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict

import numpy as np

from ..config import RunConfig
from ..evaluate import student_tools
from ..models import load_model
from ..parallel import run_jobs, worker_count
from ..preference_set import choose_items, load_model_results
from ..rundir import RunDir, read_jsonl, write_jsonl
from ..scoring import influence_scores, one_shot_accuracy, one_shot_correct
from ..tasks import load_task
from ..tasks.base import Example


def _score_args(cfg: RunConfig, task) -> dict:
    return {"max_new_tokens": cfg.prefer.max_new_tokens, "batch_size": cfg.prefer.batch_size,
            "tools": student_tools(cfg.evaluate.calculator, task)}


def choose_preference_set(cfg: RunConfig, task, student, usable: list[dict]) -> tuple[list[Example], dict]:
    """The most discriminative validation questions; conditions = one-shot with a sample of drafts."""
    pc = cfg.prefer
    validation = task.preference
    rng = random.Random(cfg.seed)
    probes = [(d["question"], d["rationale"]) for d in rng.sample(usable, min(pc.probe_demos, len(usable)))]
    probe_source = "drafts"
    if len(probes) < 2:  # a teacher that drafts nothing usable (e.g. a toy model on real data)
        probes = [(ex.question, ex.rationale) for ex in task.seed if ex.rationale][: pc.probe_demos]
        probe_source = "seed rationales"
    external = load_model_results(pc.model_results, len(validation)) if pc.model_results else None
    keep_n = min(pc.preference_questions, len(validation))
    if len(probes) >= 2:
        results = np.array(one_shot_correct(student.model, student.tokenizer, task, probes, validation,
                                            description="probing validation items", **_score_args(cfg, task)),
                           dtype=float)
        keep, selection = choose_items(results, keep_n, external, cfg.seed)
    else:
        keep, selection = list(range(keep_n)), {"method": "first_n", "kept": keep_n, "of": len(validation)}
    selection["probes"] = f"{len(probes)} {probe_source}"
    return [validation[i] for i in keep], selection


def _one_shot_scores(cfg: RunConfig, demos: list[tuple[str, str]], preference: list[Example]) -> list[float]:
    task, student = load_task(cfg.task), load_model(cfg.student, cfg.device)
    return one_shot_accuracy(student.model, student.tokenizer, task, demos, preference, **_score_args(cfg, task))


def one_shot_scores(cfg: RunConfig, task, student, demos: list[tuple[str, str]], preference: list[Example]):
    """s_r of every demo; on a multi-core CPU the demos are split across worker processes."""
    workers = worker_count(cfg.device, len(demos), cfg.workers)
    if workers == 1:
        return one_shot_accuracy(student.model, student.tokenizer, task, demos, preference,
                                 description="scoring drafts (one-shot)", **_score_args(cfg, task))
    chunks = [demos[i::workers] for i in range(workers)]
    done = run_jobs(_one_shot_scores, {i: (cfg, chunk, preference) for i, chunk in enumerate(chunks)}, workers,
                    f"scoring {len(demos)} drafts (one-shot), {workers} processes")
    scores = [0.0] * len(demos)
    for i in range(workers):
        scores[i::workers] = done[i]
    return scores


def score_drafts(cfg: RunConfig, task, student, drafts: list[dict], preference: list[Example]):
    """Score every well-formed draft (s_r) and every question (s_q: mean over its rationales)."""
    usable = [d for d in drafts if d["well_formed"]]
    demos = [(d["question"], d["rationale"]) for d in usable]
    if not demos:
        scores = []
    elif cfg.prefer.scorer == "in_context":
        scores = one_shot_scores(cfg, task, student, demos, preference)
    else:
        scores = influence_scores(student.model, student.tokenizer, task, demos, preference[:32])
    for d, s in zip(usable, scores):
        d["score"] = s
    for d in drafts:
        d.setdefault("score", None)
    by_question, by_technique = defaultdict(list), defaultdict(list)
    for d in usable:
        by_question[d["question"]].append(d["score"])
        by_technique[d["technique"]].append(d["score"])
    question_scores = [{"question": q, "score": statistics.mean(v), "n": len(v)} for q, v in by_question.items()]
    metrics = {
        "scorer": cfg.prefer.scorer, "drafts_scored": len(usable), "drafts_unscored_malformed": len(drafts) - len(usable),
        "mean_score": round(statistics.mean(scores), 4) if scores else None,
        "score_by_technique": {t: round(statistics.mean(v), 4) for t, v in by_technique.items()},
        "questions_scored": len(question_scores),
    }
    return question_scores, metrics


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("prefer")
    task = load_task(cfg.task)
    student = load_model(cfg.student, cfg.device)
    drafts = read_jsonl(run_dir.stage_dir("elicit") / "drafts.jsonl")
    preference, selection = choose_preference_set(cfg, task, student, [d for d in drafts if d["well_formed"]])
    question_scores, metrics = score_drafts(cfg, task, student, drafts, preference)
    write_jsonl(folder / "scores.jsonl", drafts)
    write_jsonl(folder / "question_scores.jsonl", question_scores)
    write_jsonl(folder / "preference_set.jsonl", [{"question": e.question, "answer": e.answer} for e in preference])
    return {"metrics": {"preference_set": selection, **metrics}}
