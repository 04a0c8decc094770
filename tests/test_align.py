"""The align stage's DPO: it trains the LoRA adapter and raises the chosen-over-rejected margin."""

import random

import pytest
import torch

from edge_tailor.config import RunConfig
from edge_tailor.dpo import train_dpo
from edge_tailor.toyworld.problems import make_splits
from edge_tailor.toyworld.styles import render_rationale
from edge_tailor.toyworld.task import toy_task

pytestmark = pytest.mark.slow


def _logp(model, tokenizer, prompt, completion):
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(p) - 1:-1]
    return torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(c)[:, None]).sum().item()


def _pairs_and_config(n, rejected_style, max_steps, seed):
    torch.set_num_threads(1)
    task = toy_task()
    rng = random.Random(seed)
    problems = make_splits(0, {"seed": n})["seed"]
    pairs = [{"prompt": task.prompt(p.question), "chosen": " " + render_rationale(p, "step", rng),
              "rejected": " " + render_rationale(p, rejected_style, rng)} for p in problems]
    cfg = RunConfig.model_validate({"device": "cpu", "align": {"max_steps": max_steps, "batch_size": 4,
                                                               "learning_rate": 2e-3}})
    return pairs, cfg


def test_dpo_trains_the_adapter_and_raises_the_margin(tmp_path):
    pairs, cfg = _pairs_and_config(24, "terse", max_steps=12, seed=0)
    trainer, history = train_dpo(cfg, pairs, tmp_path)
    model, tokenizer = trainer.model, trainer.processing_class
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # B starts at zero
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    def margin():
        return sum(_logp(model, tokenizer, p["prompt"], p["chosen"]) - _logp(model, tokenizer, p["prompt"], p["rejected"])
                   for p in pairs) / len(pairs)

    model.eval()
    after = margin()
    with model.disable_adapter():
        before = margin()
    assert after > before + 0.5, (before, after)
    assert history[-1]["rewards/margins"] > history[0]["rewards/margins"]


def test_the_teacher_seed_alone_decides_the_adapter(tmp_path):
    """`align.seeds` runs DPO once per teacher seed: the same seed must give the same adapter (the ablation's
    teacher-side spread is then the seeds', not noise), another seed another one (LoRA init and pair order)."""
    from safetensors.torch import load_file

    pairs, cfg = _pairs_and_config(8, "terse", max_steps=2, seed=2)
    weights = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        train_dpo(cfg, pairs, tmp_path / name, seed=seed)
        weights[name] = load_file(tmp_path / name / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not all(torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])


def test_a_second_round_trains_on_top_of_the_first(tmp_path):
    """Round 2's DPO starts from the round-1 teacher (its reference), and the teacher `generate` loads
    merges both adapters in order."""
    from edge_tailor.teacher import load_teacher

    pairs, cfg = _pairs_and_config(16, "verbose", max_steps=6, seed=1)
    train_dpo(cfg, pairs, tmp_path / "r1")
    first = [tmp_path / "r1" / "adapter"]
    trainer, _ = train_dpo(cfg, pairs, tmp_path / "r2", stack=first)
    model, tokenizer = trainer.model.eval(), trainer.processing_class
    one = load_teacher(cfg, stack=first).model
    both = load_teacher(cfg, stack=first + [tmp_path / "r2" / "adapter"]).model
    p = pairs[0]
    with model.disable_adapter():  # round 2's reference is the round-1 teacher
        reference = _logp(model, tokenizer, p["prompt"], p["chosen"])
    assert reference == pytest.approx(_logp(one, tokenizer, p["prompt"], p["chosen"]), abs=1e-3)
    assert _logp(model, tokenizer, p["prompt"], p["chosen"]) == \
        pytest.approx(_logp(both, tokenizer, p["prompt"], p["chosen"]), abs=1e-3)
    assert abs(_logp(both, tokenizer, p["prompt"], p["chosen"]) - reference) > 1e-3


def test_dpo_runs_on_a_gemma3_teacher(tmp_path):
    """Gemma3ForCausalLM names its backbone prefix "language_model" but keeps it at `.model`; trl's fused
    LM-head loss read `base_model` and failed on it ('CausalLMOutputWithPast' has no 'last_hidden_state')."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from edge_tailor.toyworld.tokenizer import train_tokenizer

    tokenizer = train_tokenizer([f"part {i} of order {i * 7}" for i in range(50)], vocab_size=300)
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
                              sliding_window=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    Gemma3ForCausalLM(config).save_pretrained(tmp_path / "gemma")
    tokenizer.save_pretrained(tmp_path / "gemma")
    pairs = [{"prompt": f"part {i} of", "chosen": f" order {i * 7}", "rejected": f" part {i}"} for i in range(8)]
    cfg = RunConfig.model_validate({"device": "cpu", "teacher": {"path": str(tmp_path / "gemma")},
                                    "align": {"max_steps": 3, "batch_size": 4, "learning_rate": 2e-3}})
    trainer, history = train_dpo(cfg, pairs, tmp_path / "out")
    assert type(trainer.model.get_base_model()).__name__ == "Gemma3ForCausalLM"
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)
    assert len(history) == 3 and all(h["loss"] == h["loss"] for h in history)
