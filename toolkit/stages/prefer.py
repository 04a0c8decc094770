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
from ..models import load_model
from ..preference_set import choose_items, load_model_results
from ..rundir import RunDir, read_jsonl, write_jsonl
from ..scoring import influence_scores, one_shot_accuracy, one_shot_correct
from ..tasks import load_task


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("prefer")
    task = load_task(cfg.task)
    student = load_model(cfg.student, cfg.device)
    drafts = read_jsonl(run_dir.stage_dir("elicit") / "drafts.jsonl")
    usable = [d for d in drafts if d["well_formed"]]
    pc = cfg.prefer
    score_args = {"max_new_tokens": pc.max_new_tokens, "batch_size": pc.batch_size}

    # Preference set: conditions = one-shot with a random sample of drafts (the styles differ).
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
                                            description="probing validation items", **score_args), dtype=float)
        keep, selection = choose_items(results, keep_n, external, cfg.seed)
    else:
        keep, selection = list(range(keep_n)), {"method": "first_n", "kept": keep_n, "of": len(validation)}
    selection["probes"] = f"{len(probes)} {probe_source}"
    preference = [validation[i] for i in keep]

    demos = [(d["question"], d["rationale"]) for d in usable]
    if not demos:
        scores = []
    elif pc.scorer == "in_context":
        scores = one_shot_accuracy(student.model, student.tokenizer, task, demos, preference,
                                   description="scoring drafts (one-shot)", **score_args)
    else:
        scores = influence_scores(student.model, student.tokenizer, task, demos, preference[:32])
    for d, s in zip(usable, scores):
        d["score"] = s
    for d in drafts:
        d.setdefault("score", None)

    by_question = defaultdict(list)
    for d in usable:
        by_question[d["question"]].append(d["score"])
    question_scores = [{"question": q, "score": statistics.mean(v), "n": len(v)} for q, v in by_question.items()]
    write_jsonl(folder / "scores.jsonl", drafts)
    write_jsonl(folder / "question_scores.jsonl", question_scores)
    write_jsonl(folder / "preference_set.jsonl", [{"question": e.question, "answer": e.answer} for e in preference])
    by_technique = defaultdict(list)
    for d in usable:
        by_technique[d["technique"]].append(d["score"])
    return {"metrics": {
        "scorer": pc.scorer, "preference_set": selection, "drafts_scored": len(usable),
        "drafts_unscored_malformed": len(drafts) - len(usable),
        "mean_score": round(statistics.mean(scores), 4) if scores else None,
        "score_by_technique": {t: round(statistics.mean(v), 4) for t, v in by_technique.items()},
        "questions_scored": len(question_scores),
    }}

