"""The gold ceiling's worked solutions (BBH boolean_expressions) and the shape of real rationales."""

from pathlib import Path

import pytest

from edge_tailor.tasks.bbh import load_bbh
from edge_tailor.tasks.boolean import STYLES, boolean_rationale, boolean_steps, solve_boolean
from edge_tailor.tasks.loading import length_style

FIXTURE = Path(__file__).parent / "fixtures" / "bbh" / "tasks" / "boolean_expressions.json"


def test_every_step_applies_one_operator_and_keeps_the_value():
    task = load_bbh(FIXTURE)
    assert task.gold_rationale is boolean_rationale
    for ex in task.preference + task.test:
        steps = boolean_steps(ex.question)
        expression = ex.question.strip()[:-3].split()
        operators = sum(t in ("not", "and", "or") for t in expression)
        assert len(steps) == operators  # one operator a step, none skipped
        for operation, value, after in steps:
            assert solve_boolean(after + " is") == ex.answer  # each rewrite keeps the expression's value
            assert solve_boolean(operation + " is") == value
        assert steps[-1][2] == ex.answer
        for style in STYLES:
            assert boolean_rationale(ex.question, style).endswith(f"So the answer is <ans>{ex.answer}</ans>.")
            assert task.is_correct(boolean_rationale(ex.question, style), ex)


def test_precedence_and_brackets_in_the_worked_solution():
    # not before and before or; the innermost bracket first
    assert boolean_rationale("True or not False and False is") == (
        "True or not False and False = True or True and False = True or False = True. So the answer is <ans>True</ans>.")
    assert boolean_rationale("not ( True or False ) is") == (
        "not ( True or False ) = not True = False. So the answer is <ans>False</ans>.")
    assert boolean_rationale("not not not True is", "terse") == "So the answer is <ans>False</ans>."
    verbose = boolean_rationale("not True is", "verbose")
    assert verbose.startswith("Remember that (i)") and "First, not True is False" in verbose
    assert boolean_rationale("True and is") is None and boolean_steps("__import__('os') is") is None
    with pytest.raises(ValueError, match="unknown style"):
        boolean_rationale("not True is", "poem")


def test_length_style_counts_reasoning_before_the_answer():
    assert length_style("So the answer is <ans>True</ans>.") == "answer-only"
    assert length_style("<ans>False</ans>") == "answer-only"
    assert length_style(boolean_rationale("not ( True ) and ( True ) is")) == "short"
    assert length_style(boolean_rationale("not ( True ) is", "verbose")) == "medium"
    assert length_style(" ".join(["word"] * 120) + " So the answer is (A).") == "long"
    assert load_bbh(FIXTURE).style_of is length_style


def test_a_teacher_with_demonstrations_writes_and_is_aligned_from_the_same_prompt():
    from edge_tailor.config import ElicitConfig
    from edge_tailor.pairs import rationale_pairs
    from edge_tailor.teaching import rationale_prompt, teacher_demos

    cot = FIXTURE.parent.parent / "cot-prompts" / "boolean_expressions.txt"
    task = load_bbh(FIXTURE, cot)
    zero, three = ElicitConfig(), ElicitConfig(rationale_demos=3)
    q = "not ( True ) and False is"
    assert rationale_prompt(task, q, zero) == task.prompt(q) and teacher_demos(task, zero) == []
    demos = teacher_demos(task, three)
    assert len(demos) == 3 and all(r for _, r in demos)
    erased = rationale_prompt(task, q, three)
    assert erased == task.prompt(q, demos) and erased.count("Question:") == 4
    technique = rationale_prompt(task, q, three, "inside_out")
    assert task.techniques["inside_out"] in technique and technique.replace(task.techniques["inside_out"] + "\n", "") \
        == erased  # the technique line is all that prompt erasure removes
    drafts = [{"question": q, "rationale": "a", "score": 0.6, "correct": True, "technique": "inside_out"},
              {"question": q, "rationale": "b", "score": 0.2, "correct": False, "technique": "verify"}]
    pair, = rationale_pairs(task, drafts, 0.04, prompt=lambda x: rationale_prompt(task, x, three))
    assert pair["prompt"] == erased and pair["chosen"] == " a"
    assert task.style.stop[-2:] == ("answer is True.", "answer is False.")  # decodes end after the stated answer
