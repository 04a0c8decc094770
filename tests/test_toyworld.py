"""The embedded world: reproducible build, the shipped copy matches the code, tools, loaders."""

import json

import pytest
import torch

from edge_tailor.config import ModelSpec
from edge_tailor.generation import ArithmeticTools, ToolSettings, generate
from edge_tailor.models import load_model, load_tokenizer
from edge_tailor.rundir import sha256_file
from edge_tailor.toyworld.assets import SHIPPED, world_info
from edge_tailor.toyworld.build import WorldSpec, build_corpora, build_world
from edge_tailor.toyworld.tokenizer import train_tokenizer


def _corpus_and_tokenizer_hashes(spec, tmp_path):
    corpora = build_corpora(spec)
    tok = train_tokenizer(corpora["teacher"] + corpora["student"], spec.vocab_size)
    tok.save_pretrained(tmp_path)
    return sha256_file(tmp_path / "tokenizer.json"), json.dumps(corpora, sort_keys=True)


def test_same_seed_same_tokenizer_and_corpora(tmp_path):
    spec = WorldSpec().scaled(0.05)
    a = _corpus_and_tokenizer_hashes(spec, tmp_path / "a")
    b = _corpus_and_tokenizer_hashes(spec, tmp_path / "b")
    assert a == b
    c = _corpus_and_tokenizer_hashes(WorldSpec(seed=1).scaled(0.05), tmp_path / "c")
    assert c[1] != a[1]


def test_shipped_world_was_built_by_this_code(tmp_path):
    """The shipped tokenizer and corpora hashes equal a rebuild from the recorded spec."""
    info = world_info()
    spec = WorldSpec()
    assert info["spec"]["seed"] == spec.seed and info["spec"]["teacher_docs"] == spec.teacher_docs
    built = build_world(tmp_path / "w", spec, train=False)
    assert built["hashes"] == info["hashes"]


def test_training_is_reproducible(tmp_path):
    spec = WorldSpec().scaled(0.004)
    first = build_world(tmp_path / "one", spec)
    second = build_world(tmp_path / "two", spec)
    for model in ("teacher", "student"):
        # same seed, same CPU build of torch: losses agree to float rounding
        assert first[model]["losses"] == pytest.approx(second[model]["losses"], abs=1e-4)
    assert sha256_file(tmp_path / "one" / "tokenizer" / "tokenizer.json") == \
        sha256_file(tmp_path / "two" / "tokenizer" / "tokenizer.json")


def _ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_calculator_corrects_a_wrong_result():
    tok = load_tokenizer("embedded:teacher")
    ids = _ids(tok, " 14*6=")
    tools = ArithmeticTools(tok, prompt_length=0, settings=ToolSettings(calculator=True), sample=False)
    wrong = _ids(tok, "9")[0]
    written = []
    for _ in range(3):
        scores = torch.zeros(1, len(tok))
        scores[0, wrong] = 10.0  # the model wants to write 9 every time
        scores = tools(torch.tensor([ids + written]), scores)
        written.append(int(scores[0].argmax()))
    assert tok.decode(written[:2]) == "84"
    # after the whole result the model may not lengthen it ("849"); it writes anything else freely again
    assert written[2] != wrong and not tok.decode([written[2]])[:1].isdigit()
    final = _ids(tok, " 14*6=84. #### ")
    tools = ArithmeticTools(tok, prompt_length=0, settings=ToolSettings(calculator=True), sample=False)
    scores = torch.zeros(1, len(tok))
    scores[0, wrong] = 10.0
    assert tok.decode([int(tools(torch.tensor([final]), scores)[0].argmax())]) == "8"


def test_grounding_answers_a_rationale_without_working_and_never_overrides_written_working():
    """A terse teacher ("#### " straight away) knows the solution's result, as a strong model answers directly;
    after working of its own, the answer is what the working computed (the consistency filter then judges it)."""
    tok = load_tokenizer("embedded:teacher")
    wrong = _ids(tok, "9")[0]

    def written(text, steps=4):
        tools = ArithmeticTools(tok, prompt_length=0, settings=ToolSettings(calculator=True, grounding=True),
                                solutions=[["9*6=54", "54-7=47"]], sample=False)
        ids, out = _ids(tok, text), []
        for _ in range(steps):
            scores = torch.zeros(1, len(tok))
            scores[0, wrong] = 10.0
            out.append(int(tools(torch.tensor([ids + out]), scores)[0].argmax()))
        return tok.decode(out)

    assert written(" #### ").startswith("47")
    assert written(" 9*6=54. #### ").startswith("54")
    # a number the tools wrote is whole: the model, wanting a 9 at every step, may not make 54 into 549
    equation = written(" so we compute ", steps=len(_ids(tok, "9*6=54")) + 1)
    assert equation.startswith("9*6=54") and not equation[len("9*6=54"):][:1].isdigit(), equation


def test_grounding_writes_the_solution_steps():
    model = load_model(ModelSpec(path="embedded:teacher"), "cpu")
    question = "A line makes 9 parts per hour for 6 hours. 7 parts are defective and removed. How many parts are left now?"
    prompt = f"Q: {question}\nStyle: step\nA:"
    out = generate(model.model, model.tokenizer, [prompt], max_new_tokens=40, tools=ToolSettings(True, True),
                   solutions=[["9*6=54", "54-7=47"]], stop=("\n",))[0]
    assert "9*6=54" in out and "54-7=47" in out and out.strip().endswith("#### 47")


def test_shipped_world_loads_like_a_real_model_folder():
    for name in ("teacher", "student"):
        folder = SHIPPED / name
        by_path = load_model(ModelSpec(path=str(folder)), "cpu")
        assert by_path.model.config.model_type == "llama"
        assert by_path.tokenizer.model_input_names == ["input_ids", "attention_mask"]
        assert by_path.tokenizer.padding_side == "left"
        assert sorted(p.name for p in folder.glob("*.safetensors")) == ["model.safetensors"]


def test_the_shipped_teacher_writes_what_this_student_cannot_learn_from_unless_asked():
    """ARTE's premise in the shipped world: asked plainly, the teacher answers without working (terse) or at length
    (verbose), its default mix (WorldSpec.teacher_default_styles); asked for a technique, it writes that one."""
    from collections import Counter

    from edge_tailor.config import ElicitConfig
    from edge_tailor.teaching import write_rationales
    from edge_tailor.toyworld.task import toy_task

    torch.set_num_threads(1)
    task = toy_task()
    teacher = load_model(ModelSpec(path="embedded:teacher"), "cpu")
    questions = task.preference[:64]
    styles = {}
    for technique in (None, "step"):
        drafts = write_rationales(teacher.model, teacher.tokenizer, task, questions, ElicitConfig(), techniques=[technique],
                                  temperature=1.0, seed=0)
        styles[technique] = Counter(task.style_of(d["rationale"]) for d in drafts)
        assert sum(d["correct"] for d in drafts) > 0.8 * len(drafts), technique  # its tools keep it right
    assert styles[None]["terse"] + styles[None]["verbose"] > 0.6 * 64 and styles[None]["terse"] > 0.15 * 64, styles
    assert styles["step"]["step"] > 0.8 * 64, styles
