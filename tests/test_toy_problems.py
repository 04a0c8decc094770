import random

import pytest

from edge_tailor.toyworld.problems import (
    Problem,
    Step,
    generate_problem,
    make_splits,
    parse_question,
    sample_problems,
)
from edge_tailor.toyworld.styles import STYLES, check_rationale, classify_style, parse_rationale, render_rationale
from edge_tailor.toyworld.task import TOY_STYLE, toy_task


def test_generator_and_parser_agree():
    rng = random.Random(0)
    for i in range(5000):
        p = generate_problem(rng, 1 + i % 3)
        assert parse_question(p.question) == p, p
        assert len(p.steps) == 1 + i % 3
        assert 0 <= p.answer <= 200
        for prev, step in zip(p.steps, p.steps[1:]):
            assert step.a == prev.result
        for s in p.steps:
            if s.op == "*":
                assert 2 <= s.a <= 12 and 2 <= s.b <= 12


def _one_of_each():
    """A 1-op problem per operation and a multi-op problem, for editing tests."""
    found = {}
    for p in sample_problems(3, 400):
        key = p.steps[0].op if len(p.steps) == 1 else "multi"
        found.setdefault(key, p)
    assert set(found) == {"+", "-", "*", "/", "multi"}
    return found


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "A bin holds 40 parts. The parts are painted 3 times. How many parts are there now?",  # unknown template
        "A bin holds 40 parts. 25 more parts are poured in. How many parts are there now?",  # changed word
        "A bin holds 40 parts. 45 parts are defective and removed. How many parts are there now?",  # negative
        "A bin holds 40 parts. Only one in every 7 passes the check. How many parts are there now?",  # inexact
        "A bin holds 40 parts. Only one in every 0 passes the check. How many parts are there now?",  # by zero
        "A bin holds 40 parts. 25 more gears are added. How many parts are there now?",  # a noun outside the family
        "A bin holds 40 parts. How many parts are there now?",  # no operation
        "A bin holds 40.5 parts. 25 more parts are added. How many parts are there now?",  # not an integer
        "A bin holds 40 parts. 2 more parts are added. 2 more parts are added. 2 more parts are added. "
        "2 more parts are added. How many parts are there now?",  # four operations
        "A bin holds 40 parts. 25 more parts are added.",  # no question
    ],
)
def test_parse_rejects_malformed(text):
    assert parse_question(text) is None


def test_parse_accepts_handwritten_and_rejects_edits():
    p = parse_question("A line makes 14 parts per hour for 6 hours. 9 parts are defective and removed. How many parts are left now?")
    assert p.steps == (Step(14, "*", 6, 84), Step(84, "-", 9, 75)) and p.answer == 75
    for p in _one_of_each().values():
        q = p.question
        assert parse_question(q) == p
        assert parse_question(q.replace(" ", " very ", 1)) is None  # a word the templates never write
        assert parse_question(q[:-1]) is None  # question mark gone
        assert parse_question(q.replace(".", ",", 1)) is None


def test_splits_disjoint_and_deterministic():
    sizes = {"seed": 32, "preference": 160, "validation": 160, "test": 300, "extra": 50}
    a, b, c = make_splits(0, sizes), make_splits(0, sizes), make_splits(1, sizes)
    assert a == b
    assert a["test"] != c["test"] and a["seed"] != c["seed"]
    assert {k: len(v) for k, v in a.items()} == sizes
    questions = [p.question for split in a.values() for p in split]
    assert len(questions) == len(set(questions))
    # the test set does not move when another split changes size
    assert make_splits(0, {"test": 300, "seed": 5})["test"] == a["test"]


def test_op_weights():
    ps = sample_problems(0, 600, op_weights=(1, 0, 0))
    assert all(len(p.steps) == 1 for p in ps)
    ps = sample_problems(0, 600, op_weights=(0.5, 0.5, 0))
    share = sum(len(p.steps) == 1 for p in ps) / len(ps)
    assert 0.4 < share < 0.6 and all(len(p.steps) <= 2 for p in ps)


@pytest.mark.parametrize("style", STYLES)
def test_styles_render_correct_rationales(style):
    rng = random.Random(7)
    for p in sample_problems(11, 300):
        text = render_rationale(p, style, rng)
        assert text.endswith(f"#### {p.answer}")
        check = check_rationale(p, text)
        assert check["well_formed"] and check["answer_correct"] and check["steps_correct"], (p, text)
        assert check["n_steps"] == (0 if style == "terse" else len(p.steps))
        assert classify_style(text) == style, text
        steps = parse_rationale(text)
        assert steps == ([] if style == "terse" else list(p.steps))


def test_step_style_format():
    p = Problem("q", (Step(14, "*", 6, 84), Step(84, "-", 9, 75)), 75)
    assert render_rationale(p, "step", random.Random(0)) == "14*6=84. 84-9=75. #### 75"
    assert render_rationale(p, "terse", random.Random(0)) == "#### 75"


def test_check_detects_errors():
    p = parse_question("A line makes 14 parts per hour for 6 hours. 9 parts are defective and removed. How many parts are left now?")
    wrong = check_rationale(p, "14*6=86. 86-9=77. #### 77")
    assert wrong["well_formed"] and not wrong["answer_correct"] and not wrong["steps_correct"]
    # right arithmetic, but an operand that is neither in the question nor an earlier result
    ungrounded = check_rationale(p, "14*6=84. 84-8=76. 76+1=77. #### 75")
    assert ungrounded["answer_correct"] and not ungrounded["steps_correct"]
    assert not check_rationale(p, "14*6=84. 84-9=75.")["well_formed"]
    assert not check_rationale(p, "#### 75 and more")["well_formed"]
    assert parse_rationale("14*6=84.") is None


def test_toy_task():
    task = toy_task(0)
    assert task.name == "toy-arith" and task.answer_kind == "number" and task.style == TOY_STYLE
    assert (len(task.seed), len(task.preference), len(task.test)) == (32, 160, 1000)
    # ARTE's techniques; the common-mistake style serves TeacherLM annotation only
    assert set(task.techniques) == set(STYLES) - {"mistake"} and "Style: mistake" in task.annotation_prompts["M"]
    ex = task.test[0]
    # the gold ceiling's rationale to any question the task can solve: its step-by-step solution
    assert task.gold_rationale(ex.question) == ex.rationale and task.gold_rationale("What is two plus two?") is None
    assert task.solver(ex.question) == ex.answer
    assert task.solver("What is two plus two?") is None
    assert check_rationale(parse_question(ex.question), ex.rationale)["style"] == "step"
    prompt = task.prompt("Q?", demos=[(task.seed[0].question, task.seed[0].rationale)])
    assert prompt.startswith("Q: ") and prompt.endswith("\nQ: Q?\nA:")
    assert toy_task(0).test == task.test
