"""Stage `baseline`: where teacher and student stand before any training.

Measures teacher and student accuracy on the test split and, for tasks with a baseline probe
(the embedded world: `edge_tailor.toyworld.probes`), what ARTE needs to work: the share of
well-formed drafted questions and whether the student's one-shot accuracy depends on the
demonstration's style by more than its sampling noise.
"""

from __future__ import annotations

import json

from ..config import RunConfig
from ..evaluate import evaluate_model, student_tools, summary
from ..generation import ToolSettings
from ..models import load_model
from ..rundir import RunDir
from ..tasks import load_task


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("baseline")
    task = load_task(cfg.task)
    teacher = load_model(cfg.teacher, cfg.device)
    student = teacher if cfg.student == cfg.teacher else load_model(cfg.student, cfg.device)
    test = task.test[: cfg.evaluate.test_questions]
    ev = cfg.evaluate
    solutions = None
    tools = ToolSettings(calculator=cfg.elicit.calculator, grounding=False)
    if task.solution_steps is not None:  # the teacher is grounded in the question's own solution
        solutions = [task.solution_steps(ex.question) or [] for ex in test]
        tools.grounding = True
    results = {"teacher": evaluate_model(teacher.model, teacher.tokenizer, task, test, max_new_tokens=ev.max_new_tokens,
                                         batch_size=ev.batch_size, description="teacher on test")}
    # the tools change nothing on a task without arithmetic or solutions (BBH): no second decode
    tools_apply = tools.grounding or (tools.calculator and task.calculator)
    results["teacher_with_tools"] = evaluate_model(
        teacher.model, teacher.tokenizer, task, test, tools=tools, solutions=solutions,
        max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
        description="teacher+tools on test") if tools_apply else results["teacher"]
    student_tools_ = student_tools(ev.calculator, task)
    if cfg.student == cfg.teacher and student_tools_ is None:
        # the same model, prompts and greedy decoding: the teacher's result is the student's (a real-model
        # recipe that aligns the student's own model saves a whole decode of the test split)
        results["student_before"] = results["teacher"]
    else:
        results["student_before"] = evaluate_model(student.model, student.tokenizer, task, test,
                                                   max_new_tokens=ev.max_new_tokens, batch_size=ev.batch_size,
                                                   tools=student_tools_, description="student on test")
    with open(folder / "completions.jsonl", "w") as handle:
        for i, ex in enumerate(test):
            handle.write(json.dumps({"question": ex.question, "gold": ex.answer,
                                     **{k: r["completions"][i] for k, r in results.items()}}) + "\n")
    metrics = {k: summary(r) for k, r in results.items()}
    metrics["teacher_tools_apply"] = bool(tools_apply)
    if task.baseline_probe is not None:
        metrics["world"] = task.baseline_probe(cfg, teacher, student, task, folder)
    (folder / "world_metrics.json").write_text(json.dumps(metrics, indent=2))
    return {"metrics": metrics}
