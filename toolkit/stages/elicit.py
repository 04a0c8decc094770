"""Stage `elicit` (ARTE step 1): the teacher drafts questions from seed questions and writes one
rationale per reasoning technique for each; optionally annotates a dataset the TeacherLM way."""

from __future__ import annotations

from collections import Counter

from ..annotate import annotate
from ..config import RunConfig
from ..models import load_model
from ..rundir import RunDir, write_jsonl
from ..tasks import load_task
from ..teaching import draft_questions, write_rationales


def elicit_seeds(task):
    """Seeds for elicitation; the other half is held out to measure what alignment changed."""
    half = max(1, len(task.seed) // 2)
    return task.seed[:half], task.seed[half:] or task.seed[:half]


def held_out_questions(task) -> list[str]:
    return [ex.question for ex in task.preference + task.test]


def elicit_drafts(cfg: RunConfig, task, teacher, seed: int) -> tuple[list, list[dict], dict]:
    """Drafted questions, one rationale per technique for each, and the counts (drafted, dropped and why)."""
    techniques = cfg.elicit.techniques or list(task.techniques)
    unknown = [t for t in techniques if t not in task.techniques]
    if unknown:
        from ..errors import InputError

        raise InputError("config", "elicit.techniques", f"unknown {unknown}; task has {list(task.techniques)}")
    seeds, _ = elicit_seeds(task)
    questions, filt, raw = draft_questions(teacher.model, teacher.tokenizer, task, seeds, cfg.elicit.drafts,
                                           cfg.elicit, seed, exclude=held_out_questions(task))
    drafts = write_rationales(teacher.model, teacher.tokenizer, task, questions, cfg.elicit, techniques=techniques,
                              temperature=cfg.elicit.rationale_temperature, seed=seed)
    metrics = {
        "raw_questions": raw, "questions_kept": len(questions), "questions_dropped": dict(filt.dropped),
        "well_formed_question_share": round(len(filt.kept) / max(1, raw), 4),
        "rationales": len(drafts), "techniques": techniques,
        "rationales_well_formed": sum(d["well_formed"] for d in drafts),
        "rationales_correct": sum(d["correct"] for d in drafts),
        "rationales_dropped": dict(Counter("no_answer" for d in drafts if not d["well_formed"])),
    }
    return questions, drafts, metrics


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("elicit")
    task = load_task(cfg.task)
    teacher = load_model(cfg.teacher, cfg.device)
    questions, drafts, metrics = elicit_drafts(cfg, task, teacher, cfg.seed)
    write_jsonl(folder / "questions.jsonl", [{"question": q.question, "answer": q.answer} for q in questions])
    write_jsonl(folder / "drafts.jsonl", drafts)
    record = {"metrics": metrics}
    if cfg.elicit.annotate:
        data = load_task(cfg.elicit.annotate)
        rows = annotate(teacher.model, teacher.tokenizer, data, data.seed + data.preference, cfg.elicit.annotate_order,
                        max_new_tokens=cfg.elicit.rationale_tokens, batch_size=cfg.elicit.batch_size)
        write_jsonl(folder / "annotated.jsonl", rows)
        record["metrics"]["annotated"] = len(rows)
    return record

