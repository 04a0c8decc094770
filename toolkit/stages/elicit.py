"""Stage `elicit` (ARTE step 1): the teacher drafts questions from seed questions and writes one
rationale per reasoning technique for each; optionally annotates a dataset the TeacherLM way."""

from __future__ import annotations

from ..annotate import annotate
from ..arte import elicit_drafts
from ..config import RunConfig
from ..models import load_model
from ..rundir import RunDir, write_jsonl
from ..tasks import load_task


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("elicit")
    task = load_task(cfg.task)
    teacher = load_model(cfg.teacher, cfg.device)
    questions, drafts, metrics, outputs = elicit_drafts(cfg, task, teacher, cfg.seed)
    write_jsonl(folder / "raw_drafts.jsonl", outputs)  # what the teacher wrote, before parsing
    write_jsonl(folder / "questions.jsonl", [{"question": q.question, "answer": q.answer} for q in questions])
    write_jsonl(folder / "drafts.jsonl", drafts)
    record = {"metrics": metrics}
    if cfg.elicit.annotate:
        data = load_task(cfg.elicit.annotate)
        rows, empty = annotate(teacher.model, teacher.tokenizer, data, data.seed + data.preference,
                               cfg.elicit.annotate_order, max_new_tokens=cfg.elicit.rationale_tokens,
                               batch_size=cfg.elicit.batch_size)
        write_jsonl(folder / "annotated.jsonl", rows)
        record["metrics"]["annotated"] = len(rows)
        record["metrics"]["annotations_dropped_empty"] = empty
    return record
