"""The training paths on a CUDA device: bf16 LoRA SFT, DPO on a 4-bit NF4 teacher under LoRA, and QAT.

Deselected by default (pyproject addopts); run on a CUDA machine with `pytest -m gpu`. Selected on a
machine without CUDA, every test fails (it is never skipped), so a "passing" GPU run cannot be an
empty one. Each test uses the embedded tiny models and runs in seconds on a GPU.
"""

import random

import pytest
import torch

from edge_tailor.config import DistillConfig, ModelSpec, RunConfig
from edge_tailor.dpo import train_dpo
from edge_tailor.models import load_model
from edge_tailor.qat import count_fake_quantized, prepare_qat
from edge_tailor.sft import fit_adapter, train_student
from edge_tailor.target import load_target
from edge_tailor.toyworld.problems import make_splits
from edge_tailor.toyworld.styles import render_rationale
from edge_tailor.toyworld.task import toy_task

pytestmark = pytest.mark.gpu
TASK = toy_task()
ROWS = [{"prompt": TASK.prompt(ex.question), "completion": " " + ex.rationale} for ex in TASK.preference[:64]]
CFG = DistillConfig(max_steps=6, batch_size=8, learning_rate=5e-3)  # logging_steps = 1: six losses
STUDENT = ModelSpec(path="embedded:student")
TEACHER = ModelSpec(path="embedded:teacher")


@pytest.fixture(autouse=True)
def cuda():
    if not torch.cuda.is_available():
        pytest.fail("needs a CUDA device (tests/test_gpu.py runs only with `pytest -m gpu` on a CUDA machine; "
                    "torch.cuda.is_available() is False here)", pytrace=False)
    yield
    torch.cuda.empty_cache()


def _batch(tokenizer, n=8):
    return tokenizer([r["prompt"] for r in ROWS[:n]], return_tensors="pt", padding=True).to("cuda")


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits.float()


def _mean_gap(a, b):
    return (a - b).abs().mean().item()


def test_bf16_lora_sft_on_cuda(tmp_path):
    student = load_model(STUDENT, "cuda")
    assert student.device.type == "cuda"
    params = list(student.model.parameters())
    assert all(p.device.type == "cuda" for p in params)
    assert all(p.dtype == torch.bfloat16 for p in params), {p.dtype for p in params}  # pick_dtype: bf16 on CUDA
    before = {k: v.clone() for k, v in student.model.state_dict().items()}

    trainer = fit_adapter(student.model, student.tokenizer, ROWS, CFG, device="cuda", workdir=tmp_path / "w")
    assert trainer.args.bf16 is True and not trainer.args.use_cpu
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable), [n for n in trainable if "lora_" not in n]
    changed_base = []
    for name, value in trainer.model.state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert value.device.type == "cuda", name
        if not torch.equal(value, before[key]):
            changed_base.append(name)
    assert not changed_base, changed_base
    lora_b = [v for k, v in trainer.model.state_dict().items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: training moved it

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == CFG.max_steps, losses
    assert all(torch.isfinite(torch.tensor(x)) for x in losses), losses
    half = len(losses) // 2
    assert losses[-1] < losses[0] and sum(losses[half:]) < sum(losses[:half]), losses


def test_dpo_on_a_4bit_nf4_teacher_under_lora(tmp_path):
    import bitsandbytes.nn as bnb_nn

    rng = random.Random(0)
    problems = make_splits(0, {"seed": 24})["seed"]
    pairs = [{"prompt": TASK.prompt(p.question), "chosen": " " + render_rationale(p, "step", rng),
              "rejected": " " + render_rationale(p, "terse", rng)} for p in problems]
    cfg = RunConfig.model_validate({"device": "cuda", "align": {"max_steps": 12, "batch_size": 4,
                                                                "learning_rate": 2e-3, "load_in_4bit": "auto"}})
    assert cfg.align.load_in_4bit == "auto"  # "auto" must mean 4-bit on CUDA
    plain = load_model(TEACHER, "cpu").model
    n_body_linear = sum(isinstance(m, torch.nn.Linear) for n, m in plain.named_modules() if not n.endswith("lm_head"))
    del plain

    trainer, history = train_dpo(cfg, pairs, tmp_path)
    assert trainer.args.bf16 is True
    model = trainer.model
    four_bit = [(n, m) for n, m in model.named_modules() if isinstance(m, bnb_nn.Linear4bit)]
    assert len(four_bit) == n_body_linear, (len(four_bit), n_body_linear)  # every decoder linear is 4-bit
    for name, m in four_bit:
        assert name.endswith("base_layer"), name  # the 4-bit layer sits under a LoRA adapter
        assert m.weight.quant_type == "nf4", (name, m.weight.quant_type)
        assert m.weight.device.type == "cuda", name
        assert m.compute_dtype == torch.bfloat16, (name, m.compute_dtype)
    bases = [m for n, m in model.named_modules() if n.endswith("base_layer")]
    assert bases and all(isinstance(m, bnb_nn.Linear4bit) for m in bases)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)

    adapter = tmp_path / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    margins = [h["rewards/margins"] for h in history]
    assert len(margins) >= 2 and all(torch.isfinite(torch.tensor(m)) for m in margins), margins
    assert margins[-1] > margins[0], margins


def test_qat_on_cuda(tmp_path):
    from transformers import AutoModelForCausalLM

    quant = load_target("ci-x86").quant
    plain = load_model(STUDENT, "cuda")
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in plain.model.modules())
    batch = _batch(plain.tokenizer)

    qat = prepare_qat(load_model(STUDENT, "cuda").model, quant)
    assert count_fake_quantized(qat) == n_linear  # every linear, the tied head included (quantize_lm_head)
    assert next(qat.parameters()).device.type == "cuda"
    torch.manual_seed(0)
    random_model = AutoModelForCausalLM.from_config(plain.model.config).to("cuda", torch.bfloat16).eval()
    plain_logits, qat_logits = _logits(plain.model, batch), _logits(qat, batch)
    assert torch.isfinite(qat_logits).all()
    qat_gap, random_gap = _mean_gap(plain_logits, qat_logits), _mean_gap(plain_logits, _logits(random_model, batch))
    # the fake quantization changes the numbers, but by far less than a different model does
    assert 0 < qat_gap < random_gap / 10, (qat_gap, random_gap)

    student = load_model(STUDENT, "cuda")
    merged, record = train_student(student.model, student.tokenizer, ROWS, CFG, quant=quant, device="cuda",
                                   workdir=tmp_path / "w")
    assert record["fake_quantized_linears"] == n_linear and record["steps"] == CFG.max_steps
    assert all(torch.isfinite(torch.tensor(x)) for x in record["loss"]), record["loss"]
    assert count_fake_quantized(merged) == 0
    assert type(merged.model.layers[0].mlp.up_proj) is torch.nn.Linear
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert next(merged.parameters()).device.type == "cuda"
    merged_logits = _logits(merged, batch)
    assert torch.isfinite(merged_logits).all()
    assert _mean_gap(plain_logits, merged_logits) > 0  # the trained adapter was merged in
