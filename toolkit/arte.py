"""ARTE's three steps as library calls, shared by `elicit`, `prefer` and `align` (whose further rounds
elicit, score and pair again from the aligned teacher):

- elicit: the teacher drafts questions and writes one rationale per reasoning technique;
- score: a draft's s_r is the student's one-shot accuracy on the preference set with it as the
  demonstration (or, with scorer=influence, its local data influence); a question's s_q is the
  mean over its rationales; the preference set is the most discriminative validation slice;
- pair: question-level and rationale-level DPO pairs from those scores.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter, defaultdict

import numpy as np

from .config import RunConfig
from .evaluate import student_tools
from .models import load_model
from .pairs import question_pairs, rationale_pairs
from .parallel import run_jobs, worker_count
from .preference_set import choose_items, load_model_results
from .scoring import influence_scores, one_shot_correct
from .tasks import load_task
from .tasks.base import Example
from .tasks.splits import elicit_seeds, held_out_questions
from .teaching import draft_questions, rationale_prompt, require_drafts, write_rationales


# --- elicit -----------------------------------------------------------------------------------------

def elicit_drafts(cfg: RunConfig, task, teacher, seed: int) -> tuple[list, list[dict], dict]:
    """Drafted questions, one rationale per technique for each, the counts (drafted, dropped and why) and
    the teacher's raw drafting outputs."""
    techniques = cfg.elicit.techniques or list(task.techniques)
    unknown = [t for t in techniques if t not in task.techniques]
    if unknown:
        from .errors import InputError

        raise InputError("config", "elicit.techniques", f"unknown {unknown}; task has {list(task.techniques)}")
    seeds, _ = elicit_seeds(task, cfg.elicit.seeds_per_prompt)
    questions, filt, raw = draft_questions(teacher.model, teacher.tokenizer, task, seeds, cfg.elicit.drafts,
                                           cfg.elicit, seed, exclude=held_out_questions(task))
    require_drafts(filt, raw)
    drafts = write_rationales(teacher.model, teacher.tokenizer, task, questions, cfg.elicit, techniques=techniques,
                              temperature=cfg.elicit.rationale_temperature, seed=seed)
    metrics = {
        "raw_questions": raw, "questions_kept": len(questions), "questions_dropped": dict(filt.dropped),
        "well_formed_question_share": round(len(filt.kept) / max(1, raw), 4),
        "rationales": len(drafts), "techniques": techniques,
        "rationales_well_formed": sum(d["well_formed"] for d in drafts),
        "rationales_correct": sum(d["correct"] for d in drafts),
        "rationales_dropped": dict(Counter("no_answer" for d in drafts if not d["well_formed"])),
        "drafting_outputs": len(filt.outputs),
    }
    return questions, drafts, metrics, filt.outputs


# --- score --------------------------------------------------------------------------------------------

def _score_args(cfg: RunConfig, task) -> dict:
    return {"max_new_tokens": cfg.prefer.max_new_tokens, "batch_size": cfg.prefer.batch_size,
            "tools": student_tools(cfg.evaluate.calculator, task)}


def choose_preference_set(cfg: RunConfig, task, student, usable: list[dict]) -> tuple[list[Example], dict]:
    """The most discriminative validation questions; conditions = one-shot with a few probe demonstrations.

    Probes are a sample of the drafts (their mix of styles is what the items must separate), marked
    ``probe`` and left unscored: items chosen to separate some drafts would otherwise score those same
    drafts. With fewer than 2 usable drafts the task's seed rationales probe. At most
    ``prefer.probe_questions`` validation questions are probed, sampled with the run's seed.
    """
    pc = cfg.prefer
    rng = random.Random(cfg.seed)
    picked = list(range(len(task.preference)))
    if len(picked) > pc.probe_questions:
        picked = sorted(rng.sample(picked, pc.probe_questions))
    validation = [task.preference[i] for i in picked]
    chosen = rng.sample(usable, min(pc.probe_demos, len(usable)))
    probes, probe_source = [(d["question"], d["rationale"]) for d in chosen], "drafts (left unscored)"
    if len(probes) >= 2:
        for d in chosen:
            d["probe"] = True
    else:  # a teacher that drafts almost nothing usable (a toy model on real data)
        probes = [(ex.question, ex.rationale) for ex in task.seed if ex.rationale][: pc.probe_demos]
        probe_source = "seed rationales"
    external = load_model_results(pc.model_results, len(task.preference))[:, picked] if pc.model_results else None
    keep_n = min(pc.preference_questions, len(validation))
    if len(probes) >= 2:
        results = np.array(one_shot_correct(student.model, student.tokenizer, task, probes, validation,
                                            description="probing validation items", **_score_args(cfg, task)),
                           dtype=float)
        keep, selection = choose_items(results, keep_n, external, cfg.seed)
    else:
        keep, selection = list(range(keep_n)), {"method": "first_n", "kept": keep_n, "of": len(validation)}
    selection["probes"] = f"{len(probes)} {probe_source}"
    selection["probed_questions"] = len(validation)
    return [validation[i] for i in keep], selection


def _one_shot_correct(cfg: RunConfig, demos: list[tuple[str, str]], preference: list[Example]) -> list[list[bool]]:
    task, student = load_task(cfg.task), load_model(cfg.student, cfg.device)
    return one_shot_correct(student.model, student.tokenizer, task, demos, preference, **_score_args(cfg, task))


def one_shot_results(cfg: RunConfig, task, student, demos: list[tuple[str, str]],
                     preference: list[Example]) -> list[list[bool]]:
    """Per demo, which preference questions the student gets right with it (s_r is the mean); on a multi-core
    CPU the demos are split across worker processes."""
    workers = worker_count(cfg.device, len(demos), cfg.workers)
    if workers == 1:
        return one_shot_correct(student.model, student.tokenizer, task, demos, preference,
                                description="scoring drafts (one-shot)", **_score_args(cfg, task))
    chunks = [demos[i::workers] for i in range(workers)]
    done = run_jobs(_one_shot_correct, {i: (cfg, chunk, preference) for i, chunk in enumerate(chunks)}, workers,
                    f"scoring {len(demos)} drafts (one-shot), {workers} processes")
    results: list[list[bool]] = [[] for _ in demos]
    for i in range(workers):
        results[i::workers] = done[i]
    return results


def signal_quality(correct: list[list[bool]]) -> dict:
    """How much of the spread between drafts' one-shot scores is signal: the spread itself, one draft's binomial
    sampling error, and the split-half reliability (scores on odd vs even preference questions, Pearson r, and
    Spearman-Brown corrected to the whole set). Near-zero reliability means the student cannot tell drafts apart
    on this preference set, so DPO pairs are noise."""
    scores = [sum(c) / len(c) for c in correct]
    n = len(correct[0]) if correct else 0
    out = {"drafts": len(scores), "questions": n,
           "score_std": round(statistics.pstdev(scores), 4) if scores else None,
           "sampling_error": round(statistics.mean((s * (1 - s) / n) ** 0.5 for s in scores), 4) if n else None}
    halves = [[sum(c[h::2]) / len(c[h::2]) for c in correct] for h in (0, 1)] if n >= 4 else None
    if halves and len(scores) > 2 and statistics.pstdev(halves[0]) > 0 and statistics.pstdev(halves[1]) > 0:
        r = float(np.corrcoef(halves[0], halves[1])[0, 1])
        out["split_half_r"] = round(r, 4)
        out["reliability"] = round(2 * r / (1 + r), 4) if r > -1 else None
    else:
        out["split_half_r"] = out["reliability"] = None  # every draft scored alike on a half: no spread to correlate
    return out


def score_drafts(cfg: RunConfig, task, student, drafts: list[dict], preference: list[Example]):
    """Score every well-formed draft (s_r) and every question (s_q: mean over its rationales)."""
    usable = [d for d in drafts if d["well_formed"] and not d.get("probe")]
    demos = [(d["question"], d["rationale"]) for d in usable]
    if not demos:
        scores = []
    elif cfg.prefer.scorer == "in_context":
        correct = one_shot_results(cfg, task, student, demos, preference)
        scores = [sum(c) / len(c) for c in correct]
        for d, c in zip(usable, correct):
            d["correct"] = c  # per preference question: what the signal's reliability is measured from
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
        "scorer": cfg.prefer.scorer, "drafts_scored": len(usable),
        "drafts_unscored_malformed": sum(not d["well_formed"] for d in drafts),
        "drafts_unscored_probes": sum(bool(d.get("probe")) for d in drafts),
        "mean_score": round(statistics.mean(scores), 4) if scores else None,
        "score_by_technique": {t: round(statistics.mean(v), 4) for t, v in by_technique.items()},
        "score_std_by_technique": {t: round(statistics.pstdev(v), 4) for t, v in by_technique.items()},
        "questions_scored": len(question_scores),
    }
    if cfg.prefer.scorer == "in_context" and demos:
        metrics["signal"] = signal_quality([d["correct"] for d in usable])
    return question_scores, metrics


# --- pair ---------------------------------------------------------------------------------------------

def solution_length(cfg: RunConfig, task):
    """Difficulty = number of solution steps, where the task can solve a question step by step."""
    if not (cfg.align.question_pairs_by_difficulty and task.solution_steps):
        return None
    return lambda question: len(task.solution_steps(question) or [])


def build_pairs(cfg: RunConfig, task, drafts: list[dict], question_scores: list[dict], seed: int) -> list[dict]:
    """Question-level pairs (top vs bottom quartile) and rationale-level pairs (prompt erasure), shuffled."""
    answers = {d["question"]: d["answer"] for d in drafts}
    rng = random.Random(seed)
    seeds, _ = elicit_seeds(task, cfg.elicit.seeds_per_prompt)
    pairs = []
    if cfg.align.question_pairs:
        pairs += question_pairs(task, question_scores, answers, seeds, cfg.elicit.seeds_per_prompt,
                                cfg.align.question_pairs_max, rng, difficulty=solution_length(cfg, task))
    if cfg.align.rationale_pairs:
        pairs += rationale_pairs(task, drafts, cfg.align.min_score_gap,
                                 prompt=lambda q: rationale_prompt(task, q, cfg.elicit))
    rng.shuffle(pairs)
    return pairs
