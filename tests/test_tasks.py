"""Task loaders, answer normalization and extraction, on fixture excerpts and (where present) the full data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from edge_tailor.errors import InputError
from edge_tailor.tasks.answers import extract_answer, infer_answer_kind, normalize
from edge_tailor.tasks.base import ARTE_STYLE, PromptStyle
from edge_tailor.tasks.bbh import load_bbh
from edge_tailor.tasks.gsm8k import load_gsm8k, strip_calculator_annotations
from edge_tailor.tasks.loading import split_pool
from edge_tailor.tasks.multiple_choice import load_multiple_choice

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared beside the project
# the embedded world's layout: the answer follows "#### " to the end of its line
HASH_STYLE = PromptStyle(
    demo="Q: {question}\nA: {rationale}\n", query="Q: {question}\nA:", answer_open="#### ", answer_close=""
)


def _bbh_files(root: Path) -> list[Path]:
    return sorted((root / "bbh" / "tasks").glob("*.json"))


# The fixtures always give parameters; the full data adds more where this workplace has it.
BBH_FILES = [pytest.param(p, id=f"fixture-{p.stem}") for p in _bbh_files(FIXTURES)] + [
    pytest.param(p, id=f"shared-{p.stem}") for p in _bbh_files(SHARED)
]
GSM8K_FILES = [pytest.param(FIXTURES / "gsm8k" / "test_excerpt.jsonl", id="fixture")] + [
    pytest.param(p, id="shared") for p in [SHARED / "gsm8k" / "test.jsonl"] if p.is_file()
]


def _cot(path: Path) -> Path:
    return path.parent.parent / "cot-prompts" / f"{path.stem}.txt"


def _targets(path: Path) -> list[str]:
    return [e["target"] for e in json.loads(path.read_text())["examples"]]


# --- BBH ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BBH_FILES)
def test_bbh_gold_answers_survive_every_answer_form(path):
    task = load_bbh(path, _cot(path))
    for target in _targets(path):
        gold = normalize(target, task.answer_kind)
        assert extract_answer(ARTE_STYLE.wrap_answer(target), task.answer_kind, ARTE_STYLE) == gold
        assert extract_answer("work (Z) 7 no\n" + HASH_STYLE.wrap_answer(target), task.answer_kind, HASH_STYLE) == gold
        assert extract_answer(f"Some steps. So the answer is {target}.", task.answer_kind, ARTE_STYLE) == gold
    for example in task.seed + task.preference + task.test:
        assert task.is_correct(f"Let's see. {task.style.wrap_answer(example.answer)}", example)


@pytest.mark.parametrize("path", BBH_FILES)
def test_bbh_cot_demos_give_their_stated_answer(path):
    task = load_bbh(path, _cot(path))
    assert len(task.seed) == 3 and task.description and not task.description.startswith("BENCHMARK")
    for demo in task.seed:
        stated = re.findall(r"So the answer is (.+?)\.?$", demo.rationale, re.M)[-1]
        assert demo.answer == normalize(stated, task.answer_kind)
        assert extract_answer(demo.rationale, task.answer_kind, task.style) == demo.answer
        assert not demo.question.startswith("Q:") and "Let's think step by step" not in demo.rationale


@pytest.mark.parametrize("path", BBH_FILES)
def test_bbh_splits_do_not_overlap(path):
    task = load_bbh(path, _cot(path), seed=1)
    parts = [{e.question for e in split} for split in (task.seed, task.preference, task.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    golds: dict[str, set[str]] = {}
    for e in json.loads(path.read_text())["examples"]:
        golds.setdefault(e["input"].strip(), set()).add(e["target"])
    # each question once; one asked with two different golds is dropped
    assert len(task.preference) + len(task.test) == sum(len(g) == 1 for g in golds.values())
    assert task.preference == load_bbh(path, _cot(path), seed=1).preference  # deterministic


def test_bbh_fixture_answer_kinds_and_canonical_gold():
    kinds = {p.stem: load_bbh(p).answer_kind for p in _bbh_files(FIXTURES)}
    assert kinds == {
        "boolean_expressions": "bool",
        "formal_fallacies": "validity",
        "logical_deduction_three_objects": "choice",
        "movie_recommendation": "choice",  # one stray target "Monsters, Inc" among letters
        "multistep_arithmetic_two": "number",
        "navigate": "yesno",
        "object_counting": "number",
        "sports_understanding": "yesno",
    }
    sports = load_bbh(FIXTURES / "bbh" / "tasks" / "sports_understanding.json", n_seed=0)
    assert {e.answer for e in sports.preference + sports.test} == {"Yes", "No"}  # data says yes/no
    logic = load_bbh(FIXTURES / "bbh" / "tasks" / "logical_deduction_three_objects.json")
    assert len(logic.test[0].options) == 3 and "eliminate" in logic.techniques


def test_duplicate_questions_are_kept_once_or_dropped_when_golds_disagree(tmp_path):
    path = tmp_path / "dups.json"
    targets = [("q0", "Yes"), ("q1", "Yes"), ("q1", "Yes"), ("q2", "Yes"), ("q2", "No"), ("q3", "No")]
    path.write_text(json.dumps({"examples": [{"input": q, "target": t} for q, t in targets]}))
    task = load_bbh(path, n_seed=0)
    assert sorted(e.question for e in task.preference + task.test) == ["q0", "q1", "q3"]


def test_bbh_without_cot_prompt_seeds_from_the_data():
    path = FIXTURES / "bbh" / "tasks" / "navigate.json"
    task = load_bbh(path, n_seed=2, n_preference=4)
    first = json.loads(path.read_text())["examples"][:2]
    assert [e.question for e in task.seed] == [e["input"] for e in first]
    assert all(e.rationale is None for e in task.seed)
    assert (len(task.preference), len(task.test)) == (4, 6)
    assert task.description == "Navigate." and task.name == "navigate"


def test_bbh_free_text_task(tmp_path):
    path = tmp_path / "dyck_languages.json"
    targets = ["] ) >", "} ]", ") ) }", "> ]", "]"]
    records = [{"input": f"Complete {i}: [ ( <", "target": t} for i, t in enumerate(targets)]
    path.write_text(json.dumps({"examples": records}))
    task = load_bbh(path, n_seed=1)
    assert task.answer_kind == "text"
    for t in targets:
        assert extract_answer(f"[ ( < closes with {ARTE_STYLE.wrap_answer(t)}", "text", ARTE_STYLE) == t
        assert extract_answer(f"Step ( ).\nSo the answer is {t}.", "text", ARTE_STYLE) == t


def test_bbh_malformed_inputs_name_file_and_record(tmp_path):
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"examples": [\n  {"input": "x", "target": "True"},\n  {"input": "y" "target": "False"}\n]}')
    with pytest.raises(InputError, match=r"broken\.json: line 3 column \d+: invalid JSON"):
        load_bbh(bad_json)
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"examples": [{"input": "a", "target": "True"}, {"input": "b"}]}))
    with pytest.raises(InputError, match=r"missing\.json: examples\[1\]\.target: missing"):
        load_bbh(missing)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps([{"input": "a", "target": "True"}]))
    with pytest.raises(InputError, match=r"wrong\.json: examples: missing"):
        load_bbh(wrong)
    cot = tmp_path / "cot.txt"
    cot.write_text("Evaluate.\n\nQ: True is\nA: Let's think step by step.\nIt is true.\n")
    with pytest.raises(InputError, match=r"cot\.txt: demo 1: no 'So the answer is"):
        load_bbh(_targets_file(tmp_path), cot)


def _targets_file(tmp_path: Path) -> Path:
    path = tmp_path / "ok.json"
    path.write_text(json.dumps({"examples": [{"input": f"q{i}", "target": "True"} for i in range(5)]}))
    return path


# --- GSM8K -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", GSM8K_FILES)
def test_gsm8k_gold_answers_and_rationales(path):
    task = load_gsm8k(path)
    assert task.answer_kind == "number" and len(task.seed) == 3
    examples = task.seed + task.preference + task.test
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len(examples) == len(records)
    for record in records:
        gold = normalize(record["answer"].rsplit("####", 1)[1], "number")
        assert extract_answer(record["answer"], "number", task.style) == gold  # the dataset's own "#### n"
        assert extract_answer(task.style.wrap_answer(gold), "number", task.style) == gold
    for example in examples:
        assert "<<" not in example.rationale and "####" not in example.rationale
        assert task.is_correct(f"So the total is {example.answer}. <ans>{example.answer}</ans>", example)
    assert {e.question for e in task.preference}.isdisjoint(e.question for e in task.test)


def test_gsm8k_fixture_details():
    path = FIXTURES / "gsm8k" / "test_excerpt.jsonl"
    task = load_gsm8k(path, keep_calculator_annotations=True)
    assert "<<16-3-4=9>>" in task.seed[0].rationale and task.seed[0].answer == "18"
    answers = {e.answer for e in task.seed + task.preference + task.test}
    assert "-10" in answers or "-3" in answers  # negatives
    assert any(len(a) > 3 for a in answers)  # a "1,600"-style answer, commas dropped
    assert strip_calculator_annotations("9 * 2 = $<<9*2=18>>18 a day") == "9 * 2 = $18 a day"


def test_gsm8k_malformed_lines_name_file_and_line(tmp_path):
    good = json.dumps({"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"})
    cases = {
        "bad_json.jsonl": ([good, '{"question": "x", "answer": '], r"line 2: invalid JSON"),
        "no_field.jsonl": ([good, good, json.dumps({"question": "x"})], r"line 3: answer: missing"),
        "no_hashes.jsonl": (
            [good, json.dumps({"question": "x", "answer": "It is 4."})],
            r"line 2: answer: does not end in '####",
        ),
        "not_object.jsonl": (["[1, 2]"], r"line 1: expected a JSON object"),
    }
    for name, (lines, pattern) in cases.items():
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        with pytest.raises(InputError, match=re.escape(name) + ": " + pattern):
            load_gsm8k(path, n_seed=0)


# --- multiple choice ---------------------------------------------------------------------


def test_multiple_choice_answer_forms(tmp_path):
    path = tmp_path / "quiz.jsonl"
    forms = ["B", "(B)", 1, "Paris", " paris "]
    path.write_text(
        "\n".join(
            json.dumps({"question": f"Capital of France? ({i})", "options": ["Rome", "Paris", "Oslo"], "answer": a})
            for i, a in enumerate(forms)
        )
        + "\n\n"
    )
    task = load_multiple_choice(path, n_seed=1, n_preference=1)
    examples = task.seed + task.preference + task.test
    assert len(examples) == 5 and {e.answer for e in examples} == {"(B)"}
    assert task.answer_kind == "choice" and task.name == "quiz"
    assert examples[0].question.endswith("Options:\n(A) Rome\n(B) Paris\n(C) Oslo")
    assert examples[0].options == ("Rome", "Paris", "Oslo")
    assert task.is_correct("Rome is in Italy, so not (A). So the answer is (B).", examples[0])


@pytest.mark.parametrize(
    "record, pattern",
    [
        ({"question": "q", "options": ["a", "b"], "answer": "C"}, r"line 2: answer: 'C' is not a letter \(A\) to \(B\)"),
        ({"question": "q", "options": ["a", "b"], "answer": 2}, r"line 2: answer: 2 is not"),
        ({"question": "q", "options": ["a", "b"], "answer": "c"}, r"line 2: answer: 'c' is not"),
        ({"question": "q", "options": "a b", "answer": "A"}, r"line 2: options: expected a list"),
        ({"options": ["a", "b"], "answer": "A"}, r"line 2: question: missing"),
    ],
)
def test_multiple_choice_malformed_line(tmp_path, record, pattern):
    path = tmp_path / "mc.jsonl"
    ok = {"question": "ok", "options": ["a", "b"], "answer": 0}
    path.write_text(json.dumps(ok) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(InputError, match=r"mc\.jsonl: " + pattern):
        load_multiple_choice(path)


def test_multiple_choice_bad_json(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text('{"question": "q", "options": ["a", "b"], "answer": 0}\n\n{oops}\n')
    with pytest.raises(InputError, match=r"mc\.jsonl: line 3: invalid JSON"):
        load_multiple_choice(path)


# --- answers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "targets, kind",
    [
        (["(A)", "(C)"], "choice"),
        (["True", "False"], "bool"),
        (["valid", "invalid"], "validity"),
        (["Yes", "no"], "yesno"),
        (["12", "-3", "1,234", "2.5"], "number"),
        (["apple banana", "] )"], "text"),
        (["(A)"] * 19 + ["Monsters, Inc"], "choice"),
        (["(A)", "True"], "text"),
        ([], "text"),
    ],
)
def test_infer_answer_kind(targets, kind):
    assert infer_answer_kind(targets) == kind


@pytest.mark.parametrize(
    "answer, kind, canonical",
    [
        ("(b)", "choice", "(B)"),
        ("B", "choice", "(B)"),
        ("(C) Eve finished last", "choice", "(C)"),
        (" true ", "bool", "True"),
        ("INVALID", "validity", "invalid"),
        ("yes.", "yesno", "Yes"),
        ("1,234.0", "number", "1234"),
        ("-3", "number", "-3"),
        ("$18 a day", "number", "18"),
        ("2.50", "number", "2.5"),
        ("  Apple   Banana cherry. ", "text", "apple banana cherry"),
        ("] ) >", "text", "] ) >"),
        ("True or False", "bool", "true or false"),  # no single answer: kept as text, never gold
    ],
)
def test_normalize(answer, kind, canonical):
    assert normalize(answer, kind) == canonical


@pytest.mark.parametrize(
    "completion, kind, expected",
    [
        ("<ans>(A)</ans> no wait <ans>(C)</ans>", "choice", "(C)"),
        ("So the answer is (B). Checking: (A) fails.", "choice", "(B)"),
        ("Options (A) and (D) remain; (D) fits.", "choice", "(D)"),
        ("the answer is (A). Actually the answer is (B).", "choice", "(B)"),
        ("<ans>(A)</ans>\nSo the answer is (B).", "choice", "(A)"),  # tags outrank prose
        ("#### Step 1\nadd them\nSo the answer is (B).", "choice", "(B)"),  # a heading is no answer
        ("not not True = True. So the answer is True.", "bool", "True"),
        ("False and True is False", "bool", "False"),
        ("The argument is invalid. So the answer is valid.", "validity", "valid"),
        ("It is not valid, it is invalid", "validity", "invalid"),
        ("So the answer is yes.", "yesno", "Yes"),
        ("Yes at first, but No", "yesno", "No"),
        ("3 * 4 = 12\n12 - 20 = -8\n#### -8", "number", "-8"),
        ("So the answer is 3.5.", "number", "3.5"),
        ("She makes 9 * 2 = $18 every day.", "number", "18"),
        ("<ans>1,234</ans>", "number", "1234"),
        ("So the answer is apple banana cherry.", "text", "apple banana cherry"),
        ("we close [ with ] and ( with ). So the answer is ] ) >.", "text", "] ) >"),
        ("<ans>] ) ></ans>", "text", "] ) >"),
        ("<ans>) }", "text", ") }"),  # generation stopped on the close tag
        ("no idea", "text", None),
        ("no numbers here", "number", None),
        ("", "choice", None),
    ],
)
def test_extract_answer(completion, kind, expected):
    assert extract_answer(completion, kind, ARTE_STYLE) == expected


def test_extract_answer_embedded_style_runs_to_end_of_line():
    assert extract_answer("3+4=7\n#### 7\nQ: next", "number", HASH_STYLE) == "7"
    assert extract_answer("#### 2\n#### 5", "number", HASH_STYLE) == "5"
    assert extract_answer("#### apple banana\n", "text", HASH_STYLE) == "apple banana"


def test_split_pool_is_deterministic_and_disjoint():
    pool = list(range(100))
    pref, test = split_pool(pool, 0.3, seed=4)
    assert (len(pref), len(test)) == (30, 70) and sorted(pref + test) == pool
    assert split_pool(pool, 0.3, seed=4) == (pref, test) and split_pool(pool, 0.3, seed=5) != (pref, test)
    assert len(split_pool(pool, n_preference=7)[0]) == 7
    with pytest.raises(ValueError):
        split_pool(pool, 1.5)
