"""Supervised distillation of the student: trl's SFTTrainer, a peft LoRA adapter, loss on the
completion only, and (optionally) the target's fake quantization under the adapter."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig as PeftLoraConfig
from transformers.loss.loss_utils import ForCausalLMLoss
from trl import SFTConfig, SFTTrainer

from .config import DistillConfig
from .distributed import per_device_batch
from .progress import hide_library_bars
from .prompt_format import format_of
from .seq_length import fitting_length, model_context
from .qat import convert_qat, count_fake_quantized, prepare_qat


def sft_arguments(dc: DistillConfig, output_dir: str, seed: int, device: str, max_length: int = 256) -> dict:
    cuda = torch.cuda.is_available() and device != "cpu"
    return dict(output_dir=output_dir, max_steps=dc.max_steps, per_device_train_batch_size=per_device_batch(dc.batch_size, "distill.batch_size"),
                learning_rate=dc.learning_rate, lr_scheduler_type="linear", warmup_ratio=0.03,
                logging_steps=max(1, dc.max_steps // 20), save_strategy="no", report_to=[], seed=seed,
                data_seed=seed, use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
                max_length=max_length, dataloader_num_workers=0, disable_tqdm=hide_library_bars(),
                # trl 1.16 turns checkpointing on by default: it saves GPU memory by recomputing the forward pass,
                # which on a CPU costs time and saves memory no run here lacks (default student, 30 steps: 18.4 s
                # with it, 12.2 s without)
                gradient_checkpointing=cuda)


def sft_config(dc: DistillConfig, output_dir: str, seed: int, device: str, max_length: int = 256) -> SFTConfig:
    return SFTConfig(**sft_arguments(dc, output_dir, seed, device, max_length), completion_only_loss=True)


def fit_adapter(model, tokenizer, rows: list[dict], dc: DistillConfig, *, quant=None, seed: int = 0,
                device: str = "auto", workdir: Path, teacher=None) -> SFTTrainer:
    """LoRA SFT, under the target's fake quantization when `quant` is given; with `teacher`, the loss is
    logit distillation from it (trl's GKDTrainer) instead of cross-entropy on the completion."""
    torch.manual_seed(seed)
    if quant is not None:
        prepare_qat(model, quant)
    lora = PeftLoraConfig(r=dc.lora.r, lora_alpha=dc.lora.alpha, lora_dropout=dc.lora.dropout,
                          target_modules=dc.lora.target_modules, task_type="CAUSAL_LM")
    fmt = format_of(tokenizer)  # trl tokenizes with the tokenizer's defaults, which add BOS where it belongs
    data = Dataset.from_list([{"prompt": fmt.render(r["prompt"], with_bos=False), "completion": r["completion"]}
                              for r in rows])
    # never below the old fixed 256, so runs whose rows all fit keep their exact batches and figures
    max_length = max(256, fitting_length(tokenizer, ((r["prompt"], (r["completion"],)) for r in data),
                                         model_context(model), "distill (training rows)",
                                         "lower elicit.rationale_tokens"))
    if teacher is not None:
        from .logit_kd import gkd_trainer

        kwargs = sft_arguments(dc, str(workdir), seed, device, max_length) | {"dataset_kwargs": {"skip_prepare_dataset": True}}
        trainer = gkd_trainer(model, teacher, tokenizer, data, kwargs, dc.logit_distillation, lora)
    else:
        trainer_class = SFTTrainer if quant is None else FakeQuantHeadSFTTrainer
        trainer = trainer_class(model=model, args=sft_config(dc, str(workdir), seed, device, max_length),
                                train_dataset=data,
                                processing_class=tokenizer, peft_config=lora)
    trainer.train()
    return trainer


class FakeQuantHeadSFTTrainer(SFTTrainer):
    """SFT whose loss comes from the model's own logits. trl's default fused head multiplies the hidden states by
    `lm_head.weight` directly, which would skip the head's fake quantization under QAT (an INT8 head trained as
    if it were fp32)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
        loss = ForCausalLMLoss(outputs.logits, labels, outputs.logits.shape[-1], num_items_in_batch=num_items_in_batch)
        return (loss, outputs) if return_outputs else loss


def merge_student(trainer: SFTTrainer) -> torch.nn.Module:
    """Fold the adapter into the weights, then drop the fake quantization: a plain model to export."""
    fake = count_fake_quantized(trainer.model)
    merged = trainer.model.merge_and_unload()
    if fake:
        convert_qat(merged)
    return merged.eval()


def train_student(model, tokenizer, rows: list[dict], dc: DistillConfig, *, quant=None, seed: int = 0,
                  device: str = "auto", workdir: Path, teacher=None) -> tuple[torch.nn.Module, dict]:
    trainer = fit_adapter(model, tokenizer, rows, dc, quant=quant, seed=seed, device=device, workdir=workdir,
                          teacher=teacher)
    record = {"examples": len(rows), "steps": trainer.state.global_step,
              "loss": [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h],
              "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
              "fake_quantized_linears": count_fake_quantized(trainer.model),
              "trainer": type(trainer).__name__,
              "loss_kind": "logit distillation (GKD)" if teacher is not None else "cross-entropy on the completion"}
    merged = merge_student(trainer)
    shutil.rmtree(workdir, ignore_errors=True)
    return merged, record
