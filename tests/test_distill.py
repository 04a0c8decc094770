"""Distillation: LoRA trains only the adapter, merge keeps outputs, the QAT switch, and the
fake quantization used in training computes what the exported ONNX Runtime INT8 model computes."""

import pytest
import torch

from edge_tailor.config import DistillConfig, ModelSpec
from edge_tailor.models import load_model, resolve_model_path
from edge_tailor.qat import count_fake_quantized, prepare_qat
from edge_tailor.sft import fit_adapter, merge_student, train_student
from edge_tailor.target import load_target
from edge_tailor.toyworld.task import toy_task

pytestmark = pytest.mark.slow
TASK = toy_task()
ROWS = [{"prompt": TASK.prompt(ex.question), "completion": " " + ex.rationale} for ex in TASK.preference[:64]]
CFG = DistillConfig(max_steps=6, batch_size=8, learning_rate=5e-3)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only contends on a busy 2-core box
    yield
    torch.set_num_threads(before)


def _student():
    return load_model(ModelSpec(path="embedded:student"), "cpu")


def test_lora_changes_only_adapter_weights(tmp_path):
    student = _student()
    before = {k: v.clone() for k, v in student.model.state_dict().items()}
    trainer = fit_adapter(student.model, student.tokenizer, ROWS, CFG, workdir=tmp_path / "w")
    changed_base, changed_lora = [], []
    for name, value in trainer.model.state_dict().items():
        if "lora_" in name:
            changed_lora.append(name)
        else:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            if not torch.equal(value, before[key]):
                changed_base.append(name)
    assert changed_lora and not changed_base
    lora_b = [v for k, v in trainer.model.state_dict().items() if "lora_B" in k]
    assert any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: training moved it


def test_merge_preserves_outputs(tmp_path):
    student = _student()
    trainer = fit_adapter(student.model, student.tokenizer, ROWS, CFG, workdir=tmp_path / "w")
    batch = student.tokenizer([r["prompt"] for r in ROWS[:4]], return_tensors="pt", padding=True)
    with torch.no_grad():
        with_adapter = trainer.model(**batch).logits
        merged = merge_student(trainer)(**batch).logits
    assert (with_adapter - merged).abs().max().item() < 1e-4


def test_qat_switch(tmp_path):
    target = load_target("ci-x86")
    _, with_qat = train_student(_student().model, _student().tokenizer, ROWS, CFG, quant=target.quant,
                                workdir=tmp_path / "a")
    model, without = train_student(_student().model, _student().tokenizer, ROWS, CFG, quant=None,
                                   workdir=tmp_path / "b")
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in _student().model.modules())
    assert with_qat["fake_quantized_linears"] == n_linear  # every linear, the tied head included
    assert without["fake_quantized_linears"] == 0
    assert with_qat["loss"] != without["loss"]  # the same seed and data: only the fake quantization differs
    assert count_fake_quantized(model) == 0 and type(model.model.layers[0].mlp.up_proj) is torch.nn.Linear


def test_fake_quantization_matches_onnx_runtime_int8(tmp_path):
    """QAT's simulation and the exported INT8 model agree on the same weights and input.

    Decode step (one token, batch 1): ORT's per-tensor dynamic activation scale is then torchao's
    per-token one; both use asymmetric 256-level activations whose range includes zero, and the
    weights use ORT's narrow symmetric grid (qat.NarrowRangeWeightFakeQuantizer). The integer
    products are then identical and only float rounding in scales, summation order and the
    fp32 parts (norms, softmax) remains: 1e-3 on logits of order 10, and at least 50x closer than
    the fp32 model, whose gap is the quantization noise itself.
    """
    import numpy as np
    import onnxruntime as ort

    from edge_tailor.export.onnx_export import export_onnx
    from edge_tailor.export.quantize import quantize_for_target

    folder = resolve_model_path("embedded:student")
    export_onnx(folder, tmp_path / "fp32")
    quantize_for_target(tmp_path / "fp32", tmp_path / "int8", "ci-x86")
    session = ort.InferenceSession(str(tmp_path / "int8" / "model.onnx"), providers=["CPUExecutionProvider"])
    student = _student()
    fp32 = student.model
    qat = load_model(ModelSpec(path="embedded:student"), "cpu").model
    prepare_qat(qat, load_target("ci-x86").quant)
    ids = student.tokenizer("Q: A bin holds 40 parts.", add_special_tokens=False)["input_ids"]
    config = fp32.config
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    worst_qat, worst_fp32 = 0.0, 0.0
    for token in ids:
        feed = {"input_ids": np.array([[token]]), "attention_mask": np.ones((1, 1), dtype=np.int64),
                "position_ids": np.zeros((1, 1), dtype=np.int64)}
        for i in range(config.num_hidden_layers):
            for kind in ("key", "value"):
                feed[f"past_key_values.{i}.{kind}"] = np.zeros((1, heads, 0, dim), dtype=np.float32)
        feed = {k: v for k, v in feed.items() if k in {i.name for i in session.get_inputs()}}
        onnx_logits = torch.from_numpy(session.run(["logits"], feed)[0])
        with torch.no_grad():
            x = torch.tensor([[token]])
            worst_qat = max(worst_qat, (qat(x).logits - onnx_logits).abs().max().item())
            worst_fp32 = max(worst_fp32, (fp32(x).logits - onnx_logits).abs().max().item())
    print(f"max |logit diff| vs ORT INT8: QAT {worst_qat:.2e}, fp32 {worst_fp32:.2e}")
    assert worst_qat < 1e-3 and worst_qat < worst_fp32 / 50, (worst_qat, worst_fp32)


def _kl_to_teacher(student_model, teacher_model, tokenizer, rows):
    """Mean KL(teacher || student) over the completion tokens of `rows`."""
    from edge_tailor.logit_kd import PromptCompletionCollator

    batch = PromptCompletionCollator(tokenizer)(rows)
    with torch.no_grad():
        s = torch.log_softmax(student_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                              .logits[:, :-1].float(), -1)
        t = torch.log_softmax(teacher_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                              .logits[:, :-1].float(), -1)
    mask = batch["labels"][:, 1:] != -100
    return ((t.exp() * (t - s)).sum(-1)[mask]).mean().item()


def test_logit_distillation_moves_the_student_toward_the_teacher(tmp_path):
    from trl.experimental.gkd import GKDTrainer

    from edge_tailor.config import LogitDistillationConfig

    teacher = load_model(ModelSpec(path="embedded:teacher"), "cpu").model.eval()
    student = _student()
    before = _kl_to_teacher(student.model, teacher, student.tokenizer, ROWS[:16])
    cfg = CFG.model_copy(update={"max_steps": 12, "logit_distillation": LogitDistillationConfig(enabled=True)})
    trainer = fit_adapter(student.model, student.tokenizer, ROWS, cfg, workdir=tmp_path / "w", teacher=teacher)
    assert isinstance(trainer, GKDTrainer)
    after = _kl_to_teacher(merge_student(trainer), teacher, student.tokenizer, ROWS[:16])
    plain = fit_adapter(_student().model, student.tokenizer, ROWS, cfg.model_copy(
        update={"logit_distillation": LogitDistillationConfig()}), workdir=tmp_path / "p")
    after_sft = _kl_to_teacher(merge_student(plain), teacher, student.tokenizer, ROWS[:16])
    # the same steps of cross-entropy on the text also move it, but less: the loss is the teacher's distribution
    assert after < 0.8 * before and after < after_sft, (before, after, after_sft)


def test_logit_distillation_needs_one_vocabulary():
    from types import SimpleNamespace

    from edge_tailor.errors import InputError
    from edge_tailor.logit_kd import check_shared_vocabulary

    def model(n):
        return SimpleNamespace(config=SimpleNamespace(get_text_config=lambda: SimpleNamespace(vocab_size=n)))

    check_shared_vocabulary(model(400), model(400), "s", "t")
    with pytest.raises(InputError, match="distill.logit_distillation.*400.*32000"):
        check_shared_vocabulary(model(400), model(32000), "s", "t")
