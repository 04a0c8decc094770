"""ARTE's pieces that need no model: draft parsing, pair rules, scoring bookkeeping, item choice."""

import random

import numpy as np
import pytest

from edge_tailor import scoring
from edge_tailor.annotate import check_order, compose
from edge_tailor.drafting import DraftFilter, drafting_prompt, parse_drafts
from edge_tailor.errors import InputError
from edge_tailor.pairs import question_pairs, rationale_pairs
from edge_tailor.preference_set import choose_items, discrimination_index, fit_irt_2pl
from edge_tailor.tasks.base import Example, Task
from edge_tailor.toyworld.task import toy_task

TOY = toy_task()
GOOD = "A bin holds 40 parts. 5 parts are defective and removed. How many parts are there now?"


def _generic_task():
    return Task(name="g", description="Answer yes or no.", answer_kind="yesno", seed=[], preference=[], test=[],
                techniques={"decompose": "Break it into steps."})


def test_lines_parser_on_malformed_teacher_output():
    out = f" {GOOD}\nQ: A bin holds 7 parts. 9 parts are defective and removed. How many parts are there now?\n" \
          "Q: garbled words here\nQ:\nQ: " + GOOD + "\nnot a question line"
    drafts = parse_drafts(TOY, out)
    filt = DraftFilter(TOY, seen={TOY.seed[0].question})
    for q, t in drafts:
        filt.add(q, t)
    assert [e.question for e in filt.kept] == [GOOD]
    assert filt.kept[0].answer == "35"
    assert dict(filt.dropped) == {"unparseable": 2, "empty": 1, "duplicate": 1}  # 7-9 < 0 is unparseable


def test_tagged_parser_keeps_complete_blocks_only():
    task = _generic_task()
    seeds = [Example("Is ice cold?", "Yes")]
    prompt = drafting_prompt(task, seeds)
    # the block is opened in the reply (after the chat template's assistant turn), not in the user's message
    assert prompt.endswith("\x1e<Question_2><input>") and "<input>Is ice cold?</input><target>Yes</target>" in prompt
    out = "Is fire hot?</input><target>Yes</target></Question_2>\n<Question_3><input>Broken" \
          "\n<Question_4><input>Is snow dark?</input><target>no</target></Question_4>"
    assert parse_drafts(task, out) == [("Is fire hot?", "Yes"), ("Is snow dark?", "no")]
    filt = DraftFilter(task)
    filt.add("Is snow dark?", "no")
    filt.add("Is it?", None)
    assert filt.kept[0].answer == "No" and filt.dropped["no_target"] == 1


def test_few_seeds_are_not_halved_into_identical_drafting_prompts():
    from edge_tailor.tasks.splits import elicit_seeds

    three = Task(name="g", description="d", answer_kind="yesno", seed=[Example(f"q{i}", "Yes") for i in range(3)],
                 preference=[], test=[], techniques={})
    drafting, held_out = elicit_seeds(three, per_prompt=3)
    assert drafting == held_out == three.seed  # 3 seeds: all draft (halving left 1: every prompt the same)
    six = Task(name="g", description="d", answer_kind="yesno", seed=[Example(f"q{i}", "Yes") for i in range(6)],
               preference=[], test=[], techniques={})
    drafting, held_out = elicit_seeds(six, per_prompt=3)
    assert drafting == six.seed[:3] and held_out == six.seed[3:]


def test_draft_questions_keeps_raw_outputs_and_stops_clearly_when_nothing_parses(monkeypatch):
    from edge_tailor import teaching
    from edge_tailor.config import ElicitConfig

    task = _generic_task()
    task.seed.extend([Example("Is ice cold?", "Yes"), Example("Is fire hot?", "Yes")])
    replies = iter([["I am a helpful assistant.", "Is snow dark?</input><target>no</target></Question_3>"],
                    ["Sure! Here are questions:"] * 4] + [["nothing"] * 4] * 3)
    monkeypatch.setattr(teaching, "generate", lambda model, tok, prompts, **kw: next(replies)[: len(prompts)])
    kept, filt, raw = teaching.draft_questions(None, None, task, task.seed, 2, ElicitConfig(), seed=0)
    assert [e.question for e in kept] == ["Is snow dark?"] and raw == 1
    assert filt.outputs[0] == {"round": 1, "output": "I am a helpful assistant.", "parsed": 0}
    assert filt.outputs[1]["parsed"] == 1 and {o["round"] for o in filt.outputs} == {1, 2, 3, 4}
    teaching.require_drafts(filt, raw)  # something usable: no error

    replies = iter([["I am a helpful assistant."] * 4] * 4)
    kept, filt, raw = teaching.draft_questions(None, None, task, task.seed, 2, ElicitConfig(), seed=0)
    with pytest.raises(InputError) as error:
        teaching.require_drafts(filt, raw)
    message = str(error.value)
    assert message.startswith("config: teacher: 16 drafting outputs gave 0 questions") and "log.txt" in message
    assert "'I am a helpful assistant.'" in message


def test_technique_prompt_and_erasure():
    q = TOY.test[0].question
    assert TOY.technique_prompt(q, "step") == f"Q: {q}\nStyle: step\nA:"
    assert TOY.prompt(q) == f"Q: {q}\nA:"


def _drafts(scores_by_question):
    drafts = []
    for qi, scores in enumerate(scores_by_question):
        for ti, s in enumerate(scores):
            drafts.append({"question": f"q{qi}", "technique": f"t{ti}", "rationale": f"r{qi}{ti} #### 1",
                           "score": s, "correct": True, "well_formed": True, "answer": "1"})
    return drafts


def test_rationale_pairs_best_vs_worst_with_prompt_erasure():
    task = _generic_task()
    drafts = _drafts([[0.5, 0.1, 0.3], [0.2, 0.21, 0.2]])
    pairs = rationale_pairs(task, drafts, min_gap=0.04)
    assert len(pairs) == 1  # the second question's gap is below min_gap
    p = pairs[0]
    assert p["chosen"] == " r00 #### 1" and p["rejected"] == " r01 #### 1"
    assert p["prompt"] == task.prompt("q0") and "Break it into steps" not in p["prompt"]
    drafts[0]["correct"] = False  # a wrong best rationale is never chosen
    assert rationale_pairs(task, drafts, 0.04) == []


def test_question_pairs_come_from_top_and_bottom_quartiles():
    scores = [{"question": f"q{i}", "score": i / 20} for i in range(20)]
    answers = {s["question"]: "1" for s in scores}
    pairs = question_pairs(TOY, scores, answers, TOY.seed[:4], 3, 50, random.Random(0))
    assert pairs
    top = {f" q{i}\n" for i in range(15, 20)}
    bottom = {f" q{i}\n" for i in range(0, 5)}
    for p in pairs:
        assert p["chosen"] in top and p["rejected"] in bottom
        assert p["prompt"].startswith("Questions:\n") and p["prompt"].endswith("New:\nQ:")


def test_question_pairs_by_difficulty_never_cross_levels():
    # easy questions (level 1) all score above hard ones (level 3): unstratified pairs would always
    # prefer an easy question over a hard one
    scores = [{"question": f"e{i}", "score": 0.5 + i / 100} for i in range(8)] + \
             [{"question": f"h{i}", "score": 0.1 + i / 100} for i in range(8)]
    answers = {s["question"]: "1" for s in scores}
    level = {s["question"]: 1 if s["question"].startswith("e") else 3 for s in scores}
    plain = question_pairs(TOY, scores, answers, TOY.seed[:4], 3, 40, random.Random(0))
    assert all(p["chosen"].startswith(" e") and p["rejected"].startswith(" h") for p in plain)
    pairs = question_pairs(TOY, scores, answers, TOY.seed[:4], 3, 40, random.Random(0), difficulty=level.get)
    kinds = {(p["chosen"][1], p["rejected"][1]) for p in pairs}
    assert kinds == {("e", "e"), ("h", "h")}
    for p in pairs:  # within a level: top two of eight against bottom two
        chosen, rejected = int(p["chosen"][2]), int(p["rejected"][2])
        assert chosen >= 6 and rejected <= 1


def test_one_shot_scoring_bookkeeping(monkeypatch):
    questions = [Example("a", "1"), Example("b", "2")]
    demos = [("d1", "r1"), ("d2", "r2")]
    # demo 1 makes the student right on both questions, demo 2 on the second only
    answers = {("d1", "a"): "#### 1", ("d1", "b"): "#### 2", ("d2", "a"): "#### 7", ("d2", "b"): "#### 2"}

    def fake_generate(model, tokenizer, prompts, **kwargs):
        out = []
        for p in prompts:
            demo = "d1" if "Q: d1" in p else "d2"
            question = p.rsplit("Q: ", 1)[1].split("\n")[0]
            out.append(" " + answers[(demo, question)])
        return out

    monkeypatch.setattr(scoring, "generate", fake_generate)
    assert scoring.one_shot_accuracy(None, None, TOY, demos, questions, max_new_tokens=4, batch_size=2) == [1.0, 0.5]


def test_discrimination_index_prefers_items_that_track_the_total():
    rng = np.random.default_rng(0)
    ability = np.linspace(-2, 2, 12)
    informative = (ability[:, None] + rng.normal(0, 0.3, (12, 5)) > 0).astype(float)
    noise = rng.integers(0, 2, (12, 5)).astype(float)
    constant = np.ones((12, 2))
    results = np.hstack([informative, noise, constant])
    index = discrimination_index(results)
    assert index[:5].mean() > index[5:10].mean() and (index[10:] == 0).all()
    keep, record = choose_items(results, 5, seed=0)
    assert record["method"] == "discrimination_index" and len(set(keep) & set(range(5))) >= 4


def test_irt_2pl_recovers_discrimination_order():
    rng = np.random.default_rng(1)
    theta = rng.normal(size=300)
    a = np.array([3.0, 0.2])
    p = 1 / (1 + np.exp(-a[None, :] * (theta[:, None] - 0.0)))
    y = (rng.random((300, 2)) < p).astype(float)
    fit = fit_irt_2pl(y, steps=400)
    assert fit["a"][0] > 2 * fit["a"][1]
    keep, record = choose_items(y[:10], 1, model_results=y[10:], seed=0)
    assert record["method"] == "irt_2pl" and keep == [0]


def test_annotation_order_and_composition():
    assert check_order("FCM") == "FCM"
    for bad in ("", "CX", "CC"):
        with pytest.raises(InputError, match="annotate_order"):
            check_order(bad)
    ex = Example("Is ice cold?", "Yes")
    text = compose(_generic_task(), ex, {"C": "ice is frozen water.", "M": "confusing cold with wet."}, "CM")
    assert text == "Reasoning: ice is frozen water. Common mistakes: confusing cold with wet. <ans>Yes</ans>"


def test_errors_cross_process_boundaries_intact():
    import pickle

    from edge_tailor.errors import ArtifactError, EnvironmentFailure

    for error in (InputError("config", "teacher", "drafted nothing"), ArtifactError("b/model.onnx", "sha256", "bad"),
                  EnvironmentFailure("runs/x", "locked")):
        again = pickle.loads(pickle.dumps(error))  # a worker process's error reaches the CLI this way
        assert type(again) is type(error) and str(again) == str(error)


def test_boolean_solver_matches_every_bbh_answer_and_rejects_the_rest():
    from pathlib import Path

    from edge_tailor.tasks.bbh import load_bbh
    from edge_tailor.tasks.boolean import solve_boolean

    task = load_bbh(Path(__file__).parent / "fixtures" / "bbh" / "tasks" / "boolean_expressions.json")
    assert task.solver is solve_boolean
    examples = task.test + task.preference
    assert len(examples) > 5 and all(solve_boolean(e.question) == e.answer for e in examples)
    assert solve_boolean("not True or True and False is") == "False"  # not > and > or
    assert solve_boolean("( True or False ) and not ( False ) is") == "True"
    for bad in ("True and is", "True True is", "( True is", "__import__('os') is", "True and False", "yes is"):
        assert solve_boolean(bad) is None, bad


def test_open_blocks_parse_only_where_the_task_computes_answers():
    from pathlib import Path

    from edge_tailor.tasks.bbh import load_bbh

    task = load_bbh(Path(__file__).parent / "fixtures" / "bbh" / "tasks" / "boolean_expressions.json")
    out = "not ( True ) and False is\n<Question_5><input>True or x is\n<Question_6><input>False or True is</target>"
    assert parse_drafts(task, out) == [("not ( True ) and False is", None), ("True or x is", None),
                                       ("False or True is", None)]
    filt = DraftFilter(task)
    for q, t in parse_drafts(task, out):
        filt.add(q, t)
    assert [(e.question, e.answer) for e in filt.kept] == [("not ( True ) and False is", "False"),
                                                         ("False or True is", "True")]
    assert filt.dropped["unparseable"] == 1
    assert parse_drafts(_generic_task(), out) == []  # no solver: a block needs its target
