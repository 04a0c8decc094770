"""Stage `align` (ARTE step 3): DPO on the teacher, LoRA adapter, toward what the student learns from."""

from __future__ import annotations

import random
import shutil

import torch
from datasets import Dataset
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

from ..config import RunConfig
from ..models import load_model
from ..pairs import question_pairs, rationale_pairs
from ..rundir import RunDir, read_jsonl, write_jsonl
from ..tasks import load_task
from .elicit import elicit_seeds


def dpo_config(cfg: RunConfig, output_dir: str) -> DPOConfig:
    ac = cfg.align
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    return DPOConfig(
        output_dir=output_dir, beta=ac.beta, learning_rate=ac.learning_rate, num_train_epochs=ac.epochs,
        max_steps=ac.max_steps, per_device_train_batch_size=ac.batch_size, warmup_ratio=ac.warmup_ratio,
        lr_scheduler_type="cosine",
        # trl 1.16 spells the chosen-side NLL anchor (RPO) as an extra "sft" loss term
        loss_type=["sigmoid", "sft"] if ac.nll_anchor else ["sigmoid"],
        loss_weights=[1.0, 1.0] if ac.nll_anchor else None,
        logging_steps=max(1, ac.max_steps // 16) if ac.max_steps > 0 else 5, save_strategy="no", report_to=[],
        seed=cfg.seed, use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(), max_length=512,
        dataloader_num_workers=0, disable_tqdm=False)


def train_dpo(cfg: RunConfig, pairs: list[dict], output_dir) -> tuple[object, list[dict]]:
    spec = cfg.teacher
    if cfg.align.load_in_4bit is True or (cfg.align.load_in_4bit == "auto" and torch.cuda.is_available()):
        spec = spec.model_copy(update={"load_in_4bit": True})
    teacher = load_model(spec, cfg.device)
    lora = LoraConfig(r=cfg.align.lora_r, lora_alpha=cfg.align.lora_alpha, target_modules="all-linear",
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = DPOTrainer(model=teacher.model, args=dpo_config(cfg, str(output_dir / "trainer")), train_dataset=data,
                         processing_class=teacher.tokenizer, peft_config=lora)
    trainer.train()
    trainer.save_model(str(output_dir / "adapter"))  # adapter + tokenizer, written by the main process only
    history = [h for h in trainer.state.log_history if "loss" in h]
    return trainer, history


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("align")
    task = load_task(cfg.task)
    drafts = read_jsonl(run_dir.stage_dir("prefer") / "scores.jsonl")
    question_scores = read_jsonl(run_dir.stage_dir("prefer") / "question_scores.jsonl")
    answers = {d["question"]: d["answer"] for d in drafts}
    rng = random.Random(cfg.seed)
    seeds, _ = elicit_seeds(task)
    pairs = []
    if cfg.align.question_pairs:
        pairs += question_pairs(task, question_scores, answers, seeds, cfg.elicit.seeds_per_prompt,
                                cfg.align.question_pairs_max, rng)
    if cfg.align.rationale_pairs:
        pairs += rationale_pairs(task, drafts, cfg.align.min_score_gap)
    if not pairs:
        from ..progress import console

        console.print("[yellow]  no preference pairs (no scored drafts, or all scored alike): the teacher is not "
                      "aligned and `generate` uses the original teacher for both data sets[/yellow]")
        return {"metrics": {"pairs": {"question": 0, "rationale": 0}, "skipped": "no preference pairs",
                            "loss": [], "reward_margin": [], "reward_accuracy": []}}
    rng.shuffle(pairs)
    write_jsonl(folder / "pairs.jsonl", pairs)
    trainer, history = train_dpo(cfg, pairs, folder)
    shutil.rmtree(folder / "trainer", ignore_errors=True)
    margins = [h.get("rewards/margins") for h in history]
    return {"metrics": {
        "pairs": {"question": sum(p["kind"] == "question" for p in pairs),
                  "rationale": sum(p["kind"] == "rationale" for p in pairs)},
        "steps": trainer.state.global_step,
        "loss": [round(h["loss"], 4) for h in history],
        "reward_margin": [round(m, 4) for m in margins if m is not None],
        "reward_accuracy": [round(h["rewards/accuracies"], 4) for h in history if "rewards/accuracies" in h],
    }}
