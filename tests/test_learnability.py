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
