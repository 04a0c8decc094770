"""Logit distillation from the teacher (trl's GKDTrainer): the student matches the teacher's
next-token distribution on the tailored data's completions (generalized JSD, `beta`), and with
probability `lmbda` on its own sampled completions (on-policy, GKD).

trl's GKD collator expects chat messages and a chat template; the tailored data is plain
prompt/completion text for base models, so `PromptCompletionCollator` builds the same batch
fields (input_ids, attention_mask, labels masked to the completion, left-padded prompts)."""

from __future__ import annotations

import torch

from .prompt_format import render


class PromptCompletionCollator:
    def __init__(self, tokenizer, max_length: int = 256):
        self.tokenizer, self.max_length = tokenizer, max_length

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        pad = self.tokenizer.pad_token_id
        prompts = [self._ids(render(self.tokenizer, r["prompt"])) for r in rows]
        full = [(p + self._ids(r["completion"]) + [self.tokenizer.eos_token_id])[: self.max_length]
                for p, r in zip(prompts, rows)]
        width, prompt_width = max(map(len, full)), max(map(len, prompts))
        batch = {k: torch.full((len(rows), w), v, dtype=torch.long) for k, w, v in
                 (("input_ids", width, pad), ("attention_mask", width, 0), ("labels", width, -100),
                  ("prompts", prompt_width, pad), ("prompt_attention_mask", prompt_width, 0))}
        for i, (p, ids) in enumerate(zip(prompts, full)):
            batch["input_ids"][i, : len(ids)] = torch.tensor(ids)  # right-padded for training
            batch["attention_mask"][i, : len(ids)] = 1
            batch["labels"][i, len(p): len(ids)] = torch.tensor(ids[len(p):])
            batch["prompts"][i, prompt_width - len(p):] = torch.tensor(p)  # left-padded for generation
            batch["prompt_attention_mask"][i, prompt_width - len(p):] = 1
        return batch


def check_shared_vocabulary(student, teacher, student_name: str, teacher_name: str) -> None:
    from .errors import InputError

    s, t = student.config.get_text_config().vocab_size, teacher.config.get_text_config().vocab_size
    if s != t:
        raise InputError("config", "distill.logit_distillation",
                         f"needs one vocabulary: student {student_name} has {s} tokens, teacher {teacher_name} {t}")


def gkd_trainer(model, teacher, tokenizer, data, args_kwargs: dict, kd, peft_config):
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    args = GKDConfig(**args_kwargs, lmbda=kd.lmbda, beta=kd.beta, temperature=kd.temperature,
                     max_new_tokens=kd.max_new_tokens, disable_dropout=True)
    teacher.eval()
    return GKDTrainer(model=model, teacher_model=teacher, args=args, train_dataset=data, processing_class=tokenizer,
                      data_collator=PromptCompletionCollator(tokenizer, args_kwargs.get("max_length") or 256),
                      peft_config=peft_config)
