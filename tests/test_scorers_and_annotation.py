"""The parts of ARTE and TeacherLM that run on models: the influence scorer, the one-shot scorer split
across worker processes, and annotation of a dataset (empty annotations never reach training rows)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import edge_tailor.annotate as annotate_module
from edge_tailor.annotate import annotate, first_paragraph
from edge_tailor.arte import one_shot_results, signal_quality
from edge_tailor.config import ModelSpec, load_config
from edge_tailor.models import load_model
from edge_tailor.scoring import influence_scores
from edge_tailor.tasks import load_task
from edge_tailor.toyworld.task import toy_task

pytestmark = pytest.mark.slow
TASK = toy_task()
GSM8K = Path(__file__).parent / "fixtures" / "gsm8k" / "test_excerpt.jsonl"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _student():
    return load_model(ModelSpec(path="embedded:student"), "cpu")


def test_influence_ranks_gold_rationales_above_noise_and_restores_the_model():
    student = _student()
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    questions = TASK.preference[:16]
    gold = [(ex.question, ex.rationale) for ex in TASK.seed[:4]]
    noise = [(ex.question, "x y z q w e r t y u i o p " * 3) for ex in TASK.seed[:4]]
    # lr 1e-2: at 5e-3 one noise step's effect (+0.012) sat within the gold steps' (+0.009 to +0.037)
    scores = influence_scores(student.model, student.tokenizer, TASK, gold + noise, questions, learning_rate=1e-2)
    assert min(scores[:4]) > max(scores[4:]), scores  # one step on a gold solution lowers validation loss most
    after = student.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # each probe step is undone


def test_one_shot_scores_are_the_same_split_across_worker_processes():
    cfg = load_config(None, ["prefer.max_new_tokens=24", "prefer.batch_size=32"])
    student = _student()
    # step-by-step and answer-only demonstrations: the student's one-shot accuracy differs between them
    demos = [(ex.question, ex.rationale if i % 2 else f"#### {ex.answer}") for i, ex in enumerate(TASK.seed[:5])]
    preference = TASK.preference[:12]
    serial = one_shot_results(cfg.model_copy(update={"workers": 1}), TASK, student, demos, preference)
    split = one_shot_results(cfg.model_copy(update={"workers": 2}), TASK, student, demos, preference)
    assert split == serial and len(serial) == 5 and all(len(c) == 12 for c in serial)  # order kept
    assert len({sum(c) for c in serial}) > 1  # the demos differ


def test_signal_quality_tells_a_real_spread_from_noise():
    import random

    rng = random.Random(0)
    # drafts that differ for real: each draft's questions share its own accuracy (0.1 .. 0.9)
    real = [[rng.random() < p for _ in range(64)] for p in [0.1, 0.3, 0.5, 0.7, 0.9] * 6]
    # drafts that do not: every one a coin flip per question
    noise = [[rng.random() < 0.5 for _ in range(64)] for _ in range(30)]
    good, bad = signal_quality(real), signal_quality(noise)
    assert good["reliability"] > 0.8 and good["score_std"] > 2 * good["sampling_error"]
    assert abs(bad["split_half_r"]) < 0.4 and bad["score_std"] < 1.5 * bad["sampling_error"]
    assert good["questions"] == 64 and good["drafts"] == 30
    assert signal_quality([[True, False, True, False]] * 3)["reliability"] is None  # no spread to correlate


def test_first_paragraph_skips_leading_blank_lines():
    assert first_paragraph("\n\nBolts are counted per box.\n\nQ: next") == "Bolts are counted per box."
    assert first_paragraph("  \n\n  ") == ""


def test_annotation_of_a_dataset_drops_samples_with_an_empty_annotation(monkeypatch):
    data = load_task(load_config(None, ["task.name=gsm8k", f"task.path={GSM8K}"]).task)
    examples = data.seed[:3]
    # a teacher that writes something for every kind except the common mistakes of the second sample
    outputs = {}
    for i, ex in enumerate(examples):
        for kind in "CMF":
            outputs[(ex.question, kind)] = "\n\n" if (i == 1 and kind == "M") else f"\n{kind} note {i}.\n\nrest"
    prompts = {annotate_module.annotation_prompt(data, ex, k): (ex.question, k) for ex in examples for k in "CMF"}
    monkeypatch.setattr(annotate_module, "generate",
                        lambda model, tok, batch, **kw: [outputs[prompts[p]] for p in batch])
    rows, empty = annotate(None, None, data, examples, "FCM", max_new_tokens=8, batch_size=4)
    assert empty == 1 and [r["question"] for r in rows] == [examples[0].question, examples[2].question]
    assert rows[0]["annotation_F"] == "F note 0." and rows[0]["order"] == "FCM"
    text = rows[1]["completion"]
    assert text.index("Fundamentals: F note 2.") < text.index("Reasoning: C note 2.") < text.index("Common mistakes:")
    assert text.endswith(data.style.wrap_answer(examples[2].answer))


def test_annotation_with_the_embedded_teacher_writes_only_non_empty_annotations():
    teacher = load_model(ModelSpec(path="embedded:teacher"), "cpu")
    data = load_task(load_config(None, ["task.name=gsm8k", f"task.path={GSM8K}"]).task)
    examples = (data.seed + data.preference)[:4]
    rows, empty = annotate(teacher.model, teacher.tokenizer, data, examples, "CM", max_new_tokens=16, batch_size=8)
    assert len(examples) == 4 and len(rows) + empty == 4
    assert all(r["annotation_C"] and r["annotation_M"] for r in rows)
