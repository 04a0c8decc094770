"""Stage `prefer` (ARTE step 2): score every draft by what this student learns from it.

The preference set is the most discriminative slice of the validation questions; a draft's
score s_r is the student's one-shot accuracy on it with the draft as the demonstration (or,
with scorer=influence, its local data influence); a question's score s_q is the mean over
its rationales (`edge_tailor.arte`).
"""

from __future__ import annotations

from ..arte import choose_preference_set, score_drafts
from ..config import RunConfig
from ..models import load_model
from ..rundir import RunDir, read_jsonl, write_jsonl
from ..tasks import load_task


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
