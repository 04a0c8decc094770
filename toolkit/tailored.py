"""Training data written by a teacher for this student (ARTE step 4), and the held-out check of what
alignment changed in the teacher's drafts. `generate` runs both for each of TEACHERS; `distill` and
`ablation` train on the files it writes."""

from __future__ import annotations

import statistics
from collections import Counter

from .config import RunConfig
from .evaluate import binomial_stderr, student_tools
from .generation import generate
from .scoring import one_shot_accuracy
from .tasks.splits import held_out_questions
from .teaching import draft_questions, require_drafts, write_rationales

VERIFIED_GOLD = "gold.jsonl"  # generate/: answer-verified rationales, the gold ceiling of a task without solutions
TEACHERS = ("original", "aligned")  # whose data: the base teacher, or the one with the `align` adapters merged in
ALIGNED = "aligned"


def aligned_arms(cfg: RunConfig) -> list[str]:
    """The data of each teacher-side seed's aligned teacher: `aligned` (the first seed's, which trains the
    shipped student), then `aligned-seed1`, ..."""
    return [ALIGNED] + [f"{ALIGNED}-seed{k}" for k in range(1, cfg.align.seeds)]


def teacher_seed_of(arm: str) -> int | None:
    """The teacher-side seed whose aligned teacher wrote `arm`'s data; None for the original teacher or gold."""
    if arm == ALIGNED:
        return 0
    if arm.startswith(f"{ALIGNED}-seed"):
        return int(arm.removeprefix(f"{ALIGNED}-seed"))
    return None


def data_teachers(cfg: RunConfig) -> list[str]:
    """Every teacher `generate` runs: the original, then each aligned one."""
    return ["original", *aligned_arms(cfg)]


def _sampling(cfg: RunConfig):
    gc = cfg.generate
    return cfg.elicit.model_copy(update={"temperature": gc.question_temperature, "batch_size": gc.batch_size})


def training_questions(cfg: RunConfig, task, teacher, seeds, exclude, seed: int, wanted: int) -> tuple[list, dict]:
    """`wanted` drafted questions, valid and new (none in `exclude`), and the drafting counts."""
    questions, filt, raw = draft_questions(teacher.model, teacher.tokenizer, task, seeds, wanted, _sampling(cfg), seed,
                                           exclude=exclude, max_rounds=8)
    require_drafts(filt, raw)
    return questions, {"raw_questions": raw, "questions": len(questions), "dropped_questions": dict(filt.dropped)}


def tailored_data(cfg: RunConfig, task, teacher, questions, seed: int) -> tuple[list[dict], dict]:
    """The teacher's rationales to `questions` (plain prompt, `generate.rationale_temperature`), kept where their
    answer matches the question's."""
    gc = cfg.generate
    drafts = write_rationales(teacher.model, teacher.tokenizer, task, questions, _sampling(cfg), techniques=[None],
                              temperature=gc.rationale_temperature, seed=seed, description="writing training data")
    kept = [d for d in drafts if d["correct"]][: gc.examples]
    rows = [{"prompt": task.prompt(d["question"]), "completion": " " + d["rationale"], **d} for d in kept]
    styles = Counter(task.style_of(r["rationale"]) for r in rows) if task.style_of else {}
    return rows, {"rationales": len(drafts), "inconsistent_dropped": len(drafts) - sum(d["correct"] for d in drafts),
                  "examples": len(rows), "style_mix": {k: round(v / max(1, len(rows)), 3) for k, v in sorted(styles.items())}}


def compare_on_held_out(cfg: RunConfig, task, teacher, student, held_out_seeds, preference, seed: int) -> dict:
    """The student's mean one-shot score on `preference` with this teacher's drafts (from held-out seeds) as demos."""
    gc = cfg.generate
    sampling = cfg.elicit.model_copy(update={"temperature": gc.question_temperature})
    questions, filt, raw = draft_questions(teacher.model, teacher.tokenizer, task, held_out_seeds,
                                           gc.compare_questions, sampling, seed + 7,
                                           exclude=held_out_questions(task))
    drafts = write_rationales(teacher.model, teacher.tokenizer, task, questions, sampling, techniques=[None],
                              temperature=gc.rationale_temperature, seed=seed, description="held-out drafts")
    usable = [d for d in drafts if d["well_formed"]]
    scores = one_shot_accuracy(student.model, student.tokenizer, task, [(d["question"], d["rationale"]) for d in usable],
                               preference, max_new_tokens=cfg.prefer.max_new_tokens,
                               batch_size=cfg.prefer.batch_size, tools=student_tools(cfg.evaluate.calculator, task),
                               description="scoring held-out drafts")
    mean = statistics.mean(scores) if scores else 0.0
    # sampling error of the mean score: spread across drafts plus binomial noise within each
    spread = statistics.stdev(scores) / len(scores) ** 0.5 if len(scores) > 1 else binomial_stderr(mean, len(preference))
    styles = Counter(task.style_of(d["rationale"]) for d in usable) if task.style_of else {}
    return {"mean_preference_score": round(mean, 4), "stderr": round(spread, 4), "drafts": len(drafts),
            "well_formed_question_share": round(len(questions) / max(1, raw), 4),
            "well_formed_rationale_share": round(len(usable) / max(1, len(drafts)), 4),
            "correct_share": round(sum(d["correct"] for d in drafts) / max(1, len(drafts)), 4),
            "mean_rationale_chars": round(statistics.mean(len(d["rationale"]) for d in drafts), 1) if drafts else 0,
            "style_mix": {k: round(v / max(1, len(usable)), 3) for k, v in sorted(styles.items())}}


def verified_rationales(cfg: RunConfig, task, teacher, seed: int) -> tuple[list[dict], dict]:
    """The gold ceiling's rows for a task that cannot write worked solutions: the teacher's chains of thought to
    the task's own non-test questions with the task's CoT demonstrations in context (the best prompt the task
    has), `generate.gold_samples` per question, each distinct one kept where its final answer is the gold one."""
    demos = [(s.question, s.rationale) for s in task.seed if s.rationale]
    jobs = [q for q in task.preference for _ in range(cfg.generate.gold_samples)]
    texts = generate(teacher.model, teacher.tokenizer, [task.prompt(q.question, demos) for q in jobs],
                     max_new_tokens=cfg.elicit.rationale_tokens, temperature=cfg.elicit.rationale_temperature,
                     top_p=cfg.elicit.top_p, batch_size=cfg.generate.batch_size, seed=seed, stop=task.style.stop,
                     description="answer-verified gold rationales")
    rows, seen = [], set()
    for q, text in zip(jobs, texts):
        rationale = text.strip()
        if task.is_correct(rationale, q) and (q.question, rationale) not in seen:
            seen.add((q.question, rationale))
            rows.append({"prompt": task.prompt(q.question), "completion": " " + rationale, "question": q.question,
                         "answer": q.answer, "rationale": rationale})
    return rows, {"questions": len(task.preference), "rationales": len(jobs), "verified": len(rows),
                  "demos": len(demos), "verified_questions": len({r["question"] for r in rows})}
