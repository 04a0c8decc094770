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


def test_qat_switch(tmp_path, monkeypatch):
    from edge_tailor import qat

    calls = []
    real = qat.NarrowRangeWeightFakeQuantizer.forward
    monkeypatch.setattr(qat.NarrowRangeWeightFakeQuantizer, "forward",
                        lambda self, w: calls.append(self) or real(self, w))
    target = load_target("ci-x86")
    _, with_qat = train_student(_student().model, _student().tokenizer, ROWS, CFG, quant=target.quant,
                                workdir=tmp_path / "a")
    per_quantizer = {id(q): sum(c is q for c in calls) for q in calls}
    trained_through_fake_quant = len(calls)
    model, without = train_student(_student().model, _student().tokenizer, ROWS, CFG, quant=None,
                                   workdir=tmp_path / "b")
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in _student().model.modules())
    assert with_qat["fake_quantized_linears"] == n_linear  # every linear, the tied head included
    assert without["fake_quantized_linears"] == 0
    # every linear's weights, the head's included (trl's fused head would skip it), went through the ORT-grid
    # fake quantizer at every training step, and none without QAT
    assert len(per_quantizer) == n_linear and min(per_quantizer.values()) >= CFG.max_steps
    assert len(calls) == trained_through_fake_quant
    assert count_fake_quantized(model) == 0 and type(model.model.layers[0].mlp.up_proj) is torch.nn.Linear


def _scheme(reduce_range: bool):
    """ci-x86 with full-range (VNNI-exact) or 7-bit (exact everywhere) weights, as a Target object."""
    from edge_tailor.target import Target

    data = load_target("ci-x86").model_dump()
    data["quant"]["reduce_range"] = reduce_range
    data["target"].update(name=f"scheme-rr{int(reduce_range)}", isa="avx2" if reduce_range else "avx512_vnni")
    return Target.model_validate(data)


def _max_logit_gap(session, model, ids) -> float:
    import numpy as np

    config = model.config
    heads, dim = config.num_key_value_heads, config.hidden_size // config.num_attention_heads
    names = {i.name for i in session.get_inputs()}
    worst = 0.0
    for token in ids:
        feed = {"input_ids": np.array([[token]]), "attention_mask": np.ones((1, 1), dtype=np.int64),
                "position_ids": np.zeros((1, 1), dtype=np.int64)}
        for i in range(config.num_hidden_layers):
            for kind in ("key", "value"):
                feed[f"past_key_values.{i}.{kind}"] = np.zeros((1, heads, 0, dim), dtype=np.float32)
        onnx_logits = torch.from_numpy(session.run(["logits"], {k: v for k, v in feed.items() if k in names})[0])
        with torch.no_grad():
            worst = max(worst, (model(torch.tensor([[token]])).logits - onnx_logits).abs().max().item())
    return worst


def test_fake_quantization_matches_onnx_runtime_int8_on_this_cpu(tmp_path):
    """QAT's simulation equals the exported INT8 model exactly where the host's kernel is exact for the scheme.

    Both schemes run on whatever CPU this is: 7-bit weights (reduce_range, the default target) must match
    on every x86-64; full-range 8-bit weights must match on a VNNI/AMX host and, on an AVX2-only host,
    must be shown NOT to match (VPMADDUBSW saturates) -- so the test cannot pass vacuously on either.
    Decode step (one token, batch 1): ORT's per-tensor dynamic activation scale is then torchao's
    per-token one; weights use ORT's narrow symmetric grid (qat.NarrowRangeWeightFakeQuantizer). Integer
    products are then identical and only float rounding remains: 1e-3 on logits of order 10.
    A mismatched simulation (7-bit QAT against the 8-bit file) must sit far off, so the comparison
    itself discriminates.
    """
    import onnxruntime as ort

    from edge_tailor.export.onnx_export import export_onnx
    from edge_tailor.export.quantize import quantize_for_target
    from edge_tailor.hostcpu import detect, scheme_exact_on

    host = detect()
    folder = resolve_model_path("embedded:student")
    export_onnx(folder, tmp_path / "fp32")
    ids = _student().tokenizer("Q: A bin holds 40 parts. 5 are removed.", add_special_tokens=False)["input_ids"]
    fp32 = _student().model
    gaps = {}
    for reduce_range in (True, False):
        target = _scheme(reduce_range)
        out = tmp_path / f"int8-rr{int(reduce_range)}"
        quantize_for_target(tmp_path / "fp32", out, target)
        session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        qat = prepare_qat(_student().model, target.quant)
        other = prepare_qat(_student().model, _scheme(not reduce_range).quant)
        # Full-range weights were shown exact on AMX (Sapphire Rapids). On an AMD EPYC with avx512_vnni and no AMX
        # (2026-12-08) ORT 1.32's optimized graph was not: max logit gap 0.019 at ORT_ENABLE_ALL and DISABLE_ALL,
        # 2.9e-6 at ORT_ENABLE_BASIC, while MatMulInteger alone was exact on random and extreme operands; so only
        # AMX is held to exactness here, and hostcpu's claim for VNNI without AMX is an open finding (docs/targets.md)
        exact_here = scheme_exact_on(target.quant, host.arch, host.kernel) and (reduce_range or host.kernel == "amx")
        gaps[reduce_range] = {"qat": _max_logit_gap(session, qat, ids), "mismatched_qat": _max_logit_gap(session, other, ids),
                              "fp32": _max_logit_gap(session, fp32, ids), "exact_here": exact_here}
    print(f"host kernel {host.kernel} ({host.describe()}): {gaps}")
    assert gaps[True]["exact_here"], "7-bit weights are exact on every x86-64 kernel"
    for reduce_range, g in gaps.items():
        assert g["mismatched_qat"] > 20 * max(g["qat"], 1e-4) or not g["exact_here"], (reduce_range, g)
        if g["exact_here"]:
            assert g["qat"] < 1e-3 and g["qat"] < g["fp32"] / 50, (reduce_range, g)
        elif host.kernel == "avx2":  # saturation: ORT's numbers are not the ones QAT trained for
            assert g["qat"] > 0.05, (reduce_range, g)
        else:  # VNNI without AMX: off by far more than float rounding, far less than AVX2's saturation
            assert g["qat"] > 1e-3, (reduce_range, g)


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


def test_qat_trained_and_merged_student_exports_to_the_int8_it_simulated(tmp_path):
    """QAT-merge numerics: train LoRA under the target's fake quantization, merge, export, quantize; the
    merged weights under the same fake quantization give ONNX Runtime's INT8 logits (the merge does not
    move the weights off what training saw), far closer than the merged fp32 model does."""
    import onnxruntime as ort

    from edge_tailor.export.onnx_export import export_onnx
    from edge_tailor.export.quantize import quantize_for_target

    target = load_target("ci-x86")
    student = _student()
    merged, record = train_student(student.model, student.tokenizer, ROWS, CFG, quant=target.quant,
                                   workdir=tmp_path / "w")
    assert record["fake_quantized_linears"] > 0 and count_fake_quantized(merged) == 0
    merged.save_pretrained(tmp_path / "student", safe_serialization=True)
    student.tokenizer.save_pretrained(tmp_path / "student")
    export_onnx(tmp_path / "student", tmp_path / "fp32")
    quantize_for_target(tmp_path / "fp32", tmp_path / "int8", target)
    session = ort.InferenceSession(str(tmp_path / "int8" / "model.onnx"), providers=["CPUExecutionProvider"])
    # a fresh load of what was saved (a deepcopy would keep the trainer's forward hooks on the old modules)
    simulated = prepare_qat(load_model(ModelSpec(path=str(tmp_path / "student")), "cpu").model, target.quant)
    ids = student.tokenizer("Q: A line makes 9 parts per hour.", add_special_tokens=False)["input_ids"]
    gap_qat, gap_fp32 = _max_logit_gap(session, simulated, ids), _max_logit_gap(session, merged, ids)
    assert gap_qat < 1e-3 and gap_qat < gap_fp32 / 20, (gap_qat, gap_fp32)


def test_the_qat_trainer_computes_trl_s_loss(tmp_path, monkeypatch):
    """Under QAT the loss comes from the model's logits (so the fake-quantized head is used); without fake
    quantization that is exactly trl's fused-head completion loss, step for step."""
    from edge_tailor import sft

    _, fused = train_student(_student().model, _student().tokenizer, ROWS, CFG, quant=None, workdir=tmp_path / "a")
    monkeypatch.setattr(sft, "SFTTrainer", sft.FakeQuantHeadSFTTrainer)
    _, through_logits = train_student(_student().model, _student().tokenizer, ROWS, CFG, quant=None,
                                      workdir=tmp_path / "b")
    assert through_logits["trainer"] == "FakeQuantHeadSFTTrainer"
    assert through_logits["loss"] == pytest.approx(fused["loss"], abs=1e-3)
