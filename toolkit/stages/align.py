"""Stage `align` (ARTE step 3): DPO on the teacher, LoRA adapter, toward what the student learns from."""

from __future__ import annotations

import random
import shutil

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from trl import DPOConfig, DPOTrainer

from ..config import RunConfig
from ..models import load_model
from ..pairs import question_pairs, rationale_pairs
from ..progress import quiet
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
        dataloader_num_workers=0, disable_tqdm=quiet())


def adapters(run_dir: RunDir) -> list:
    """The DPO adapters of every finished round, in order (none when `align` found no pairs)."""
    folder = run_dir.stage_dir("align")
    found = [folder / "adapter"] + sorted(folder.glob("round*/adapter"), key=lambda p: int(p.parent.name[5:]))
    return [p for p in found if (p / "adapter_config.json").exists()]


def load_teacher(cfg: RunConfig, run_dir: RunDir | None = None, spec=None, stack: list | None = None):
    """The teacher with the given (default: every finished round's) adapters merged in, in order."""
    teacher = load_model(spec or cfg.teacher, cfg.device)
    for adapter in stack if stack is not None else adapters(run_dir):
        if not (adapter / "adapter_model.safetensors").is_file():  # peft would fall back to a pickled .bin
            from ..errors import ArtifactError

            raise ArtifactError(adapter, "adapter_model.safetensors", "missing: rerun `align` (pickled adapters "
                                                                      "are never loaded)")
        teacher.model = PeftModel.from_pretrained(teacher.model, str(adapter)).merge_and_unload()
    teacher.model.eval()
    return teacher


def train_dpo(cfg: RunConfig, pairs: list[dict], output_dir, stack: list | None = None) -> tuple[object, list[dict]]:
    """DPO with a new LoRA adapter on the teacher (with earlier rounds' adapters merged in: the reference)."""
    spec = cfg.teacher
    if cfg.align.load_in_4bit is True or (cfg.align.load_in_4bit == "auto" and torch.cuda.is_available()):
        spec = spec.model_copy(update={"load_in_4bit": True})
    teacher = load_teacher(cfg, spec=spec, stack=stack or [])
    teacher.model.train()
    lora = LoraConfig(r=cfg.align.lora_r, lora_alpha=cfg.align.lora_alpha, target_modules="all-linear",
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = DPOTrainer(model=teacher.model, args=dpo_config(cfg, str(output_dir / "trainer")), train_dataset=data,
                         processing_class=teacher.tokenizer, peft_config=lora)
    trainer.train()
    trainer.save_model(str(output_dir / "adapter"))  # adapter + tokenizer, written by the main process only
    shutil.rmtree(output_dir / "trainer", ignore_errors=True)
    history = [h for h in trainer.state.log_history if "loss" in h]
    return trainer, history


def solution_length(cfg: RunConfig, task):
    """Difficulty = number of solution steps, where the task can solve a question step by step."""
    if not (cfg.align.question_pairs_by_difficulty and task.solution_steps):
        return None
    return lambda question: len(task.solution_steps(question) or [])


def build_pairs(cfg: RunConfig, task, drafts: list[dict], question_scores: list[dict], seed: int) -> list[dict]:
    """Question-level pairs (top vs bottom quartile) and rationale-level pairs (prompt erasure), shuffled."""
    answers = {d["question"]: d["answer"] for d in drafts}
    rng = random.Random(seed)
    seeds, _ = elicit_seeds(task)
    pairs = []
    if cfg.align.question_pairs:
        pairs += question_pairs(task, question_scores, answers, seeds, cfg.elicit.seeds_per_prompt,
                                cfg.align.question_pairs_max, rng, difficulty=solution_length(cfg, task))
    if cfg.align.rationale_pairs:
        pairs += rationale_pairs(task, drafts, cfg.align.min_score_gap)
    rng.shuffle(pairs)
    return pairs


def _summary(pairs: list[dict], trainer, history: list[dict]) -> dict:
    margins = [h.get("rewards/margins") for h in history]
    return {"pairs": {"question": sum(p["kind"] == "question" for p in pairs),
                      "rationale": sum(p["kind"] == "rationale" for p in pairs)},
            "steps": trainer.state.global_step,
            "loss": [round(h["loss"], 4) for h in history],
            "reward_margin": [round(m, 4) for m in margins if m is not None],
            "reward_accuracy": [round(h["rewards/accuracies"], 4) for h in history if "rewards/accuracies" in h]}


def further_round(cfg: RunConfig, run_dir: RunDir, task, student, preference, number: int) -> dict:
    """ARTE again from the aligned teacher: elicit, score on the same preference set, pair, DPO."""
    from .elicit import elicit_drafts
    from .prefer import score_drafts

    folder = run_dir.stage_dir("align") / f"round{number}"
    folder.mkdir(parents=True, exist_ok=True)
    stack = adapters(run_dir)
    teacher = load_teacher(cfg, stack=stack)
    _, drafts, elicited = elicit_drafts(cfg, task, teacher, cfg.seed + 1000 * number)
    del teacher
    question_scores, scored = score_drafts(cfg, task, student, drafts, preference)
    write_jsonl(folder / "scores.jsonl", drafts)
    pairs = build_pairs(cfg, task, drafts, question_scores, cfg.seed + number)
    out = {"round": number, "drafts": elicited["rationales"], "mean_score": scored["mean_score"],
           "score_by_technique": scored["score_by_technique"]}
    if not pairs:
        return {**out, "pairs": {"question": 0, "rationale": 0}, "skipped": "no preference pairs"}
    write_jsonl(folder / "pairs.jsonl", pairs)
    trainer, history = train_dpo(cfg, pairs, folder, stack=stack)
    return {**out, **_summary(pairs, trainer, history)}


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("align")
    for stale in [folder / "adapter", *folder.glob("round*")]:  # an earlier run's rounds must not be merged in
        shutil.rmtree(stale, ignore_errors=True)
    task = load_task(cfg.task)
    drafts = read_jsonl(run_dir.stage_dir("prefer") / "scores.jsonl")
    question_scores = read_jsonl(run_dir.stage_dir("prefer") / "question_scores.jsonl")
    pairs = build_pairs(cfg, task, drafts, question_scores, cfg.seed)
    if not pairs:
        from ..progress import console

        console.print("[yellow]  no preference pairs (no scored drafts, or all scored alike): the teacher is not "
                      "aligned and `generate` uses the original teacher for both data sets[/yellow]")
        return {"metrics": {"pairs": {"question": 0, "rationale": 0}, "skipped": "no preference pairs",
                            "loss": [], "reward_margin": [], "reward_accuracy": []}}
    write_jsonl(folder / "pairs.jsonl", pairs)
    trainer, history = train_dpo(cfg, pairs, folder)
    metrics = _summary(pairs, trainer, history)
    if cfg.align.rounds > 1:
        from ..tasks.base import Example

        student = load_model(cfg.student, cfg.device)
        preference = [Example(r["question"], r["answer"])
                      for r in read_jsonl(run_dir.stage_dir("prefer") / "preference_set.jsonl")]
        metrics["rounds"] = [further_round(cfg, run_dir, task, student, preference, k)
                             for k in range(2, cfg.align.rounds + 1)]
    return {"metrics": metrics}
