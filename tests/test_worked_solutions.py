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
