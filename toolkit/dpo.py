"""DPO on the teacher with a new LoRA adapter (trl's DPOTrainer), as `align` runs it each round."""

from __future__ import annotations

import shutil

import torch
from datasets import Dataset
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

from .config import RunConfig
from .distributed import per_device_batch
from .progress import hide_library_bars
from .prompt_format import format_of
from .seq_length import fitting_length, model_context
from .teacher import load_teacher


def dpo_config(cfg: RunConfig, output_dir: str, seed: int | None = None, max_length: int = 512) -> DPOConfig:
    ac = cfg.align
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    return DPOConfig(
        output_dir=output_dir, beta=ac.beta, learning_rate=ac.learning_rate, num_train_epochs=ac.epochs,
        max_steps=ac.max_steps, per_device_train_batch_size=per_device_batch(ac.batch_size, "align.batch_size"), warmup_ratio=ac.warmup_ratio,
        lr_scheduler_type="cosine",
        # trl 1.16 spells the chosen-side NLL anchor (RPO) as an extra "sft" loss term
        loss_type=["sigmoid", "sft"] if ac.nll_anchor else ["sigmoid"],
        loss_weights=[1.0, 1.0] if ac.nll_anchor else None,
        logging_steps=max(1, ac.max_steps // 16) if ac.max_steps > 0 else 5, save_strategy="no", report_to=[],
        seed=cfg.seed if seed is None else seed, use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(), max_length=max_length,
        dataloader_num_workers=0, disable_tqdm=hide_library_bars(),
        gradient_checkpointing=cuda)  # as in sft_arguments: recomputation buys GPU memory, on a CPU only time


def expose_backbone(model) -> None:
    """Make ``model.base_model`` the decoder backbone, as trl's fused LM-head loss expects.

    trl 1.16's DPO always calls ``model.base_model`` and reads ``last_hidden_state``. transformers 4.57's
    ``Gemma3ForCausalLM`` declares ``base_model_prefix = "language_model"`` but keeps its backbone at
    ``.model``, so ``base_model`` falls back to the whole CausalLM and DPO fails with "'CausalLMOutputWithPast'
    object has no attribute 'last_hidden_state'". An instance attribute fixes the lookup for this model only.
    """
    if model.base_model is model and isinstance(getattr(model, "model", None), torch.nn.Module):
        model.base_model_prefix = "model"


def train_dpo(cfg: RunConfig, pairs: list[dict], output_dir, stack: list | None = None,
              seed: int | None = None) -> tuple[object, list[dict]]:
    """DPO with a new LoRA adapter on the teacher (with earlier rounds' adapters merged in: the reference);
    `seed` (default: the run's) initialises the adapter and orders the pairs."""
    spec = cfg.teacher
    if cfg.align.load_in_4bit is True or (cfg.align.load_in_4bit == "auto" and torch.cuda.is_available()):
        spec = spec.model_copy(update={"load_in_4bit": True})
    teacher = load_teacher(cfg, spec=spec, stack=stack or [])
    teacher.model.train()
    expose_backbone(teacher.model)
    lora = LoraConfig(r=cfg.align.lora_r, lora_alpha=cfg.align.lora_alpha, target_modules="all-linear",
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    torch.manual_seed(cfg.seed if seed is None else seed)  # trl wraps the model in LoRA before the Trainer seeds
    fmt = format_of(teacher.tokenizer)  # trl tokenizes with the tokenizer's defaults: BOS added there
    data = Dataset.from_list([{"prompt": fmt.render(p["prompt"], with_bos=False), "chosen": p["chosen"],
                               "rejected": p["rejected"]} for p in pairs])
    # never below the old fixed 512, so runs whose pairs all fit keep their exact batches and figures
    pairs_text = ((r["prompt"], (r["chosen"], r["rejected"])) for r in data)
    max_length = max(512, fitting_length(teacher.tokenizer, pairs_text, model_context(teacher.model),
                                         "align (DPO pairs)", "lower elicit.rationale_demos or elicit.rationale_tokens"))
    trainer = DPOTrainer(model=teacher.model, args=dpo_config(cfg, str(output_dir / "trainer"), seed, max_length),
                         train_dataset=data,
                         processing_class=teacher.tokenizer, peft_config=lora)
    trainer.train()
    # Trainer.save_model writes on the main process only; with several processes every rank keeps the adapter in
    # its own stage folder (edge_tailor.rundir.FollowerRunDir), where a further ARTE round reads it back
    trainer.model.save_pretrained(str(output_dir / "adapter"))
    teacher.tokenizer.save_pretrained(str(output_dir / "adapter"))
    shutil.rmtree(output_dir / "trainer", ignore_errors=True)
    history = [h for h in trainer.state.log_history if "loss" in h]
    return trainer, history
