"""The ARTE stages on a real-format task (a BBH excerpt) with the embedded tiny models: the
loaders, prompts, parsers and scoring run end to end and the records say what happened
(accuracy is near zero: these models never saw such text).

The toy teacher cannot draft BBH questions (it never saw the tagged format), so elicit stops with a
clear error; the run through prefer, align and generate drafts with a stand-in that returns BBH
questions through the same filter, so everything after drafting runs on the real format."""

import json
from pathlib import Path

import pytest

from edge_tailor.cli import main

pytestmark = pytest.mark.slow
BBH = Path(__file__).parent / "fixtures" / "bbh"


ARGS = ["name=bbh", "threads=1", "task.name=bbh", f"task.path={BBH / 'tasks' / 'navigate.json'}",
        f"task.cot_prompt={BBH / 'cot-prompts' / 'navigate.txt'}", "elicit.drafts=4", "elicit.max_new_tokens=48"]


def test_elicit_stops_clearly_when_the_teacher_drafts_nothing(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path), *ARGS, "--only", "elicit"]) == 2
    err = capsys.readouterr().err
    assert "error: config: teacher: 16 drafting outputs gave 0 questions" in err and "log.txt" in err
    run = tmp_path / "bbh"
    assert not (run / "elicit").exists()  # the failed stage left nothing behind but the log
    log = (run / "log.txt").read_text()
    assert "draft 0 (round 1, 0 parsed):" in log and "draft 15 (round 4, 0 parsed):" in log


def _bbh_drafter(monkeypatch):
    """A stand-in teacher's drafting: BBH questions from the task's test split, through the real filter."""
    from edge_tailor import arte, tailored
    from edge_tailor.drafting import DraftFilter

    def draft(model, tokenizer, task, seeds, wanted, cfg, seed, exclude=(), max_rounds=4):
        filt = DraftFilter(task, seen=set(seeds and [s.question for s in seeds]))
        for example in task.test[-wanted:]:
            filt.outputs.append({"round": 1, "output": example.question, "parsed": 1})
            filt.add(example.question, example.answer)
        return filt.kept, filt, wanted

    monkeypatch.setattr(arte, "draft_questions", draft)
    monkeypatch.setattr(tailored, "draft_questions", draft)


def test_arte_stages_on_bbh(tmp_path, monkeypatch):
    _bbh_drafter(monkeypatch)
    # workers=1: the teachers' data in this process, where the stand-in drafter is patched in
    args = ["run", "--out", str(tmp_path), "name=bbh", "threads=1", "workers=1", "task.name=bbh",
            f"task.path={BBH / 'tasks' / 'navigate.json'}", f"task.cot_prompt={BBH / 'cot-prompts' / 'navigate.txt'}",
            "elicit.drafts=4", "elicit.max_new_tokens=48", "elicit.rationale_tokens=32", "prefer.max_new_tokens=16",
            "prefer.probe_demos=2", "generate.examples=4", "generate.compare_questions=4",
            "generate.compare_preference=4", "align.max_steps=2", "align.seeds=1",
            "--only", "elicit", "--only", "prefer", "--only", "align", "--only", "generate"]
    assert main(args) == 0
    run = tmp_path / "bbh"
    record = lambda s: json.loads((run / "records" / f"{s}.json").read_text())["metrics"]  # noqa: E731
    elicit = record("elicit")
    assert elicit["raw_questions"] == elicit["questions_kept"] + sum(elicit["questions_dropped"].values())
    assert elicit["questions_kept"] == 4 and elicit["drafting_outputs"] == 4
    assert len((run / "elicit" / "raw_drafts.jsonl").read_text().splitlines()) == 4
    from edge_tailor.tasks.bbh import load_bbh

    assert elicit["techniques"] == list(load_bbh(BBH / "tasks" / "navigate.json").techniques)
    prefer = record("prefer")
    # probes: 2 one-shot conditions (prefer.probe_demos=2) from the teacher's well-formed drafts, then left
    # unscored (scored on items chosen to separate them, they would be judged by their own probe), or, with
    # fewer than 2 usable drafts (the toy teacher on BBH text), the task's own CoT rationales
    drafts = elicit["rationales_well_formed"] >= 2
    assert prefer["preference_set"]["probes"] == ("2 drafts (left unscored)" if drafts else "2 seed rationales")
    assert prefer["drafts_unscored_probes"] == (2 if drafts else 0)
    assert prefer["drafts_scored"] == elicit["rationales_well_formed"] - prefer["drafts_unscored_probes"]
    assert prefer["preference_set"]["method"] == "discrimination_index"
    assert prefer["preference_set"]["kept"] == 4
    generate = record("generate")
    assert set(generate["data"]) == {"original", "aligned"}
    for which in ("original", "aligned"):
        assert (run / "generate" / f"{which}.jsonl").exists()


def test_baseline_decodes_the_teacher_once_where_tools_change_nothing(tmp_path, monkeypatch):
    from edge_tailor.stages import baseline

    calls = []
    real = baseline.evaluate_model
    monkeypatch.setattr(baseline, "evaluate_model", lambda *a, **kw: calls.append(kw["description"]) or real(*a, **kw))
    assert main(["run", "--out", str(tmp_path), *ARGS, "evaluate.test_questions=4", "workers=1", "--only", "baseline"]) == 0
    metrics = json.loads((tmp_path / "bbh" / "records" / "baseline.json").read_text())["metrics"]
    assert calls == ["teacher on test", "student on test"]  # BBH: no arithmetic, no solutions to ground in
    assert metrics["teacher_tools_apply"] is False and metrics["teacher_with_tools"] == metrics["teacher"]


def test_baseline_decodes_once_when_the_teacher_is_the_student(tmp_path, monkeypatch):
    from edge_tailor.stages import baseline

    calls, loads = [], []
    real, real_load = baseline.evaluate_model, baseline.load_model
    monkeypatch.setattr(baseline, "evaluate_model", lambda *a, **kw: calls.append(kw["description"]) or real(*a, **kw))
    monkeypatch.setattr(baseline, "load_model", lambda spec, device: loads.append(spec.path) or real_load(spec, device))
    assert main(["run", "--out", str(tmp_path), *ARGS, "evaluate.test_questions=4", "teacher.path=embedded:student",
                 "workers=1", "--only", "baseline"]) == 0
    metrics = json.loads((tmp_path / "bbh" / "records" / "baseline.json").read_text())["metrics"]
    assert calls == ["teacher on test"] and loads == ["embedded:student"]
    assert metrics["student_before"] == metrics["teacher"]
    # the same path loaded another way is another model: decoded again
    calls.clear()
    assert main(["run", "--out", str(tmp_path / "b"), *ARGS, "evaluate.test_questions=4", "teacher.path=embedded:student",
                 "teacher.dtype=float32", "workers=1", "--only", "baseline"]) == 0
    assert calls == ["teacher on test", "student on test"]


def test_fidelity_prompts_skip_training_questions_prefer_unscored_ones_and_say_when_none_is_left(tmp_path):
    from edge_tailor.config import load_config
    from edge_tailor.errors import InputError
    from edge_tailor.rundir import RunDir, write_jsonl
    from edge_tailor.distillation import held_out_prompts
    from edge_tailor.tasks import load_task

    path, cot = BBH / "tasks" / "boolean_expressions.json", BBH / "cot-prompts" / "boolean_expressions.txt"
    spec = ["task.name=bbh", f"task.path={path}", f"task.cot_prompt={cot}"]
    annotate = ["elicit.annotate.name=bbh", f"elicit.annotate.path={path}", f"elicit.annotate.cot_prompt={cot}"]
    cfg = load_config(overrides=[*spec, *annotate, "distill.use_annotations=true", "evaluate.test_questions=6"])
    task = load_task(cfg.task)
    run = RunDir(tmp_path / "run")
    for stage in ("generate", "elicit"):
        run.stage_dir(stage).mkdir(parents=True)
    write_jsonl(run.stage_dir("generate") / "aligned.jsonl", [])
    annotated = [{"question": ex.question, "completion": "x"} for ex in task.preference]
    write_jsonl(run.stage_dir("elicit") / "annotated.jsonl", annotated)
    assert held_out_prompts(cfg, run, task) == [task.prompt(ex.question) for ex in task.test[6:] + task.test[:6]]
    # every test question scored: the scored ones are still held out from training, unscored ones first
    everything = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"test_questions": len(task.test)})})
    assert held_out_prompts(everything, run, task) == [task.prompt(ex.question) for ex in task.test]
    write_jsonl(run.stage_dir("generate") / "aligned.jsonl",
                [{"prompt": task.prompt(ex.question), "completion": "x"} for ex in task.test])
    with pytest.raises(InputError, match="no held-out prompt left for the fidelity check"):
        held_out_prompts(cfg, run, task)
