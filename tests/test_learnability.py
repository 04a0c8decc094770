"""The learnability benchmark's arms: each is one style or one difficulty, gold-correct, outside every split."""

from collections import Counter

from edge_tailor.benchmarks.learnability import ARMS, arm_rows
from edge_tailor.toyworld.build import WorldSpec
from edge_tailor.toyworld.problems import parse_question
from edge_tailor.toyworld.styles import check_rationale, classify_style
from edge_tailor.toyworld.task import toy_task


def test_each_arm_is_one_kind_of_correct_example_outside_the_splits():
    task = toy_task()
    splits = {ex.question for split in (task.seed, task.preference, task.test) for ex in split}
    for arm, (style, ops) in ARMS.items():
        rows = arm_rows(task, style, ops, 60, seed=0)
        questions = [r["prompt"].removeprefix("Q: ").removesuffix("\nA:") for r in rows]
        assert len(set(questions)) == 60 and not splits & set(questions), arm
        for q, r in zip(questions, rows):
            problem = parse_question(q)
            check = check_rationale(problem, r["completion"].strip())
            assert check["answer_correct"], (arm, r)
            assert classify_style(r["completion"]) == style or style == "teacher-default", (arm, r)
            if ops is not None:
                assert len(problem.steps) == ops, (arm, q)
    mixed = {len(parse_question(r["prompt"].removeprefix("Q: ").removesuffix("\nA:")).steps)
             for r in arm_rows(task, "verbose", None, 60, seed=0)}
    assert mixed == {1, 2, 3}  # style arms keep the task's mix of difficulties
    # the teacher-default arm draws each example's style in the teacher's own default proportions
    default = WorldSpec().teacher_default_styles
    styles = Counter(classify_style(r["completion"]) for r in arm_rows(task, "teacher-default", None, 2000, seed=0))
    assert all(abs(styles[s] / 2000 - w) < 0.04 for s, w in default.items()), styles


def test_real_task_arms_train_each_worked_solution_style_on_the_runs_own_questions(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from edge_tailor.benchmarks import learnability
    from edge_tailor.rundir import write_jsonl
    from edge_tailor.tasks.boolean import boolean_rationale

    bbh = Path(__file__).parent / "fixtures" / "bbh"
    config = tmp_path / "real.yaml"
    config.write_text(f"task: {{name: bbh, path: {bbh / 'tasks' / 'boolean_expressions.json'}}}\n"
                      "distill: {ablation_qat: false}\nworkers: 1\n")
    run = tmp_path / "run"
    for stage in ("generate", "prefer"):
        (run / stage).mkdir(parents=True)
    questions = ["not ( True ) and False is", "True or False and not True is", "not not False is"]
    write_jsonl(run / "generate" / "questions.jsonl", [{"question": q, "answer": "x"} for q in questions])
    write_jsonl(run / "generate" / "aligned.jsonl", [{"question": q} for q in questions[:2]])  # the budget: 2
    write_jsonl(run / "prefer" / "preference_set.jsonl", [{"question": "True is", "answer": "True"}])
    trained = {}
    monkeypatch.setattr(learnability, "train_and_test",
                        lambda cfg, task, rows, seed: trained.setdefault((cfg.distill.qat, seed), []).append(rows) or 0.5)
    monkeypatch.setattr("edge_tailor.models.load_model", lambda *a, **kw: type("M", (), {"model": 0, "tokenizer": 0}))
    monkeypatch.setattr("edge_tailor.scoring.one_shot_accuracy", lambda m, t, task, demos, pref, **kw: [0.25] * len(demos))
    assert learnability.main(["--config", str(config), "--run", str(run), "--seeds", "1",
                              "--out", str(tmp_path / "out")]) == 0
    arms = trained[(False, 0)]  # the ablation's recipe: no fake quantization
    assert len(arms) == 3
    for rows, style in zip(arms, ("step", "verbose", "terse")):
        assert [r["completion"] for r in rows] == [" " + boolean_rationale(q, style) for q in questions[:2]]
    report = json.loads((tmp_path / "out" / "learnability.json").read_text())
    assert report["examples"] == 2 and report["one_shot_questions"] == 1 and set(report["results"]) == {
        "step", "verbose", "terse"} and report["results"]["step"]["one_shot"] == 0.25
