"""The calculator the student decodes with: one rule (``calculator_next``) in the edge runtime and in
the toolkit's generation, so a bundle scores on the device as the student was scored in training."""

from __future__ import annotations

import numpy as np
import pytest

from edge_tailor.config import ModelSpec
from edge_tailor.export import runtime
from edge_tailor.export.runtime import calculator_next


@pytest.mark.parametrize("text, expected", [
    (" 14*6=", "84"), (" 14*6=8", "4"), (" 14*6=84", None), (" 14*6=85", None),
    (" 81/3=", "27"), (" 9/2=", None), (" 5-9=", "-4"), (" 12 + 70 =", "82"),
    (" 12+70=82. 82-5=77. #### ", "77"), (" 12+70=82. #### 8", "2"), (" 12+70=82. #### 82", None),
    (" 5-9=-", "4"), (" 3-5=-2. #### -", "2"),  # a negative result written one token at a time
    (" #### ", None), ("no equation here", None), (" 3+4=7. 7", None),
])
def test_calculator_next(text, expected):
    assert calculator_next(text) == expected


class _Vocab:
    """Character-level stand-in for EdgeModel's encode/decode."""
    chars = " 0123456789+-*/=#."

    def encode(self, text):
        return [self.chars.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def test_edge_calculator_forces_only_the_result_tokens():
    vocab = _Vocab()
    calc = runtime.Calculator(vocab)
    rows = [vocab.encode(" 14*6="), vocab.encode(" 14*6=8"), vocab.encode(" 14*6=84"), vocab.encode(" 14")]
    scores = np.zeros((4, len(vocab.chars)), dtype=np.float32)
    out = calc(rows, scores.copy())
    assert vocab.decode([int(out[0].argmax())]) == "8" and np.isinf(out[0]).sum() == len(vocab.chars) - 1
    assert vocab.decode([int(out[1].argmax())]) == "4"
    # after a whole result no digit may lengthen it ("14*6=849"); anything else is free, as after a plain number
    digits = [i for i, c in enumerate(vocab.chars) if c.isdigit()]
    assert np.isinf(out[2][digits]).all() and np.isinf(out[2]).sum() == len(digits)
    assert not np.isinf(out[3]).any()  # the model writes freely


@pytest.fixture(scope="module")
def embedded_student(tmp_path_factory):
    """The shipped embedded student, in PyTorch and exported through Optimum (fp32) and quantized for ci-x86."""
    from edge_tailor.export.onnx_export import export_onnx
    from edge_tailor.export.quantize import quantize_for_target
    from edge_tailor.models import load_model
    from edge_tailor.toyworld.assets import embedded_model_dir

    out = tmp_path_factory.mktemp("embedded-student")
    fp32 = export_onnx(embedded_model_dir("student"), out / "fp32")
    quantize_for_target(fp32, out / "int8", "ci-x86")
    return load_model(ModelSpec(path="embedded:student"), "cpu"), fp32, out / "int8"


@pytest.mark.slow
def test_edge_runtime_with_calculator_matches_toolkit_generation(embedded_student):
    """Exported, the student decodes the same texts with the edge runtime's calculator as in the toolkit."""
    from edge_tailor.generation import ToolSettings, generate
    from edge_tailor.toyworld.task import toy_task

    student, fp32, _ = embedded_student
    task = toy_task(0)
    prompts = [task.prompt(ex.question) for ex in task.test[:12]]
    plain = generate(student.model, student.tokenizer, prompts, max_new_tokens=40, stop=task.style.stop)
    ours = generate(student.model, student.tokenizer, prompts, max_new_tokens=40, stop=task.style.stop,
                    tools=ToolSettings(calculator=True))
    assert ours != plain  # the tool changed results (the student cannot add on its own)
    edge = runtime.EdgeModel.load(fp32)
    results = edge.generate_batch(prompts, 40, stop=list(task.style.stop), batch_size=5,
                                  logits_processor=runtime.Calculator(edge))
    assert [r.text for r in results] == ours


@pytest.mark.slow
def test_int8_accuracy_on_the_default_world_is_within_the_ci_budget(embedded_student):
    """The default world's student, quantized as ci-x86 says and run by the edge runtime, loses no more
    test accuracy than the target's max_accuracy_drop against PyTorch fp32 (both with the calculator)."""
    from edge_tailor.config import RunConfig
    from edge_tailor.evaluate import evaluate_model
    from edge_tailor.generation import ToolSettings
    from edge_tailor.benchmarks.accuracy import edge_accuracy
    from edge_tailor.target import load_target
    from edge_tailor.toyworld.task import toy_task

    student, _, int8 = embedded_student
    task = toy_task(0)
    cfg = RunConfig()
    torch_fp32 = evaluate_model(student.model, student.tokenizer, task, task.test, max_new_tokens=48, batch_size=100,
                                tools=ToolSettings(calculator=True))["accuracy"]
    edge_int8 = edge_accuracy(int8, task, task.test, cfg)
    assert edge_int8["calculator"] and edge_int8["n"] == len(task.test) == 1000
    assert torch_fp32 > 0.2  # the student does answer with the calculator; the comparison is not 0 vs 0
    assert torch_fp32 - edge_int8["accuracy"] <= load_target("ci-x86").budgets.max_accuracy_drop
