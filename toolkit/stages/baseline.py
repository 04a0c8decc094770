"""Stage `baseline`: where teacher and student stand before any training.

Measures teacher and student accuracy on the test split and, for tasks with a baseline probe
(the embedded world: `edge_tailor.toyworld.probes`), what ARTE needs to work: the share of
well-formed drafted questions and whether the student's one-shot accuracy depends on the
demonstration's style by more than its sampling noise. The measurements are independent jobs,
run side by side on a multi-core CPU (`edge_tailor.parallel`).
"""

from __future__ import annotations

import json

from ..config import RunConfig
from ..evaluate import evaluate_model, student_tools, summary
from ..generation import ToolSettings
from ..models import load_model
from ..parallel import run_jobs, worker_count
from ..rundir import RunDir, naming
from ..tasks import load_task


def _teacher_tools(cfg: RunConfig, task, test) -> tuple[ToolSettings, list | None, bool]:
    """The teacher's generation tools on the test split, its solutions, and whether the tools change anything."""
    tools = ToolSettings(calculator=cfg.elicit.calculator, grounding=False)
    solutions = None
    if task.solution_steps is not None:  # the teacher is grounded in the question's own solution
        solutions = [task.solution_steps(ex.question) or [] for ex in test]
        tools.grounding = True
    # the tools change nothing on a task without arithmetic or solutions (BBH): no second decode
    return tools, solutions, tools.grounding or (tools.calculator and task.calculator)


def _measure(cfg: RunConfig, what: str, folder) -> dict:
    """One of the baseline's measurements, loading what it needs (in a worker process or in this one)."""
    task = load_task(cfg.task)
    ev = cfg.evaluate
    test = task.test[: ev.test_questions]
    if what == "probe":
        teacher = load_model(cfg.teacher, cfg.device)
        student = teacher if cfg.student == cfg.teacher else load_model(cfg.student, cfg.device)
        return task.baseline_probe(cfg, teacher, student, task, folder)
    model = load_model(cfg.student if what == "student_before" else cfg.teacher, cfg.device)
    kwargs = {"max_new_tokens": ev.max_new_tokens, "batch_size": ev.batch_size}
    if what == "teacher_with_tools":
        tools, solutions, _ = _teacher_tools(cfg, task, test)
        return evaluate_model(model.model, model.tokenizer, task, test, tools=tools, solutions=solutions,
                              description="teacher+tools on test", **kwargs)
    tools = student_tools(ev.calculator, task) if what == "student_before" else None
    return evaluate_model(model.model, model.tokenizer, task, test, tools=tools,
                          description=f"{what.replace('_before', '')} on test", **kwargs)


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("baseline")
    task = load_task(cfg.task)
    test = task.test[: cfg.evaluate.test_questions]
    _, _, tools_apply = _teacher_tools(cfg, task, test)
    # the same model, prompts and greedy decoding: the teacher's result is the student's (a real-model
    # recipe that aligns the student's own model saves a whole decode of the test split)
    same = cfg.student == cfg.teacher and student_tools(cfg.evaluate.calculator, task) is None
    wanted = ["teacher", *(["teacher_with_tools"] if tools_apply else []), *([] if same else ["student_before"]),
              *(["probe"] if task.baseline_probe is not None else [])]
    workers = worker_count(cfg.device, len(wanted), cfg.workers)
    results = run_jobs(_measure, {what: (cfg, what, folder) for what in wanted}, workers,
                       f"baseline: {len(wanted)} measurements, {workers} at a time")
    results.setdefault("teacher_with_tools", results["teacher"])
    results.setdefault("student_before", results["teacher"])
    world = results.pop("probe", None)
    with naming(folder / "completions.jsonl"), open(folder / "completions.jsonl", "w") as handle:
        for i, ex in enumerate(test):
            handle.write(json.dumps({"question": ex.question, "gold": ex.answer,
                                     **{k: results[k]["completions"][i] for k in
                                        ("teacher", "teacher_with_tools", "student_before")}}) + "\n")
    metrics = {k: summary(results[k]) for k in ("teacher", "teacher_with_tools", "student_before")}
    metrics["teacher_tools_apply"] = bool(tools_apply)
    if world is not None:
        metrics["world"] = world
    metrics["workers"] = workers
    (folder / "world_metrics.json").write_text(json.dumps(metrics, indent=2))
    return {"metrics": metrics}
