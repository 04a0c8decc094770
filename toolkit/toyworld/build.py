"""`tailor toy build`: build the embedded world (tokenizer, corpora, teacher, student) from a seed.

Same seed -> byte-identical tokenizer and corpora (checked by hash in world.json) and,
on the same machine and torch build, identical training losses.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from transformers import (DataCollatorForLanguageModeling, LlamaConfig, LlamaForCausalLM, Trainer,
                          TrainingArguments)

from ..rundir import sha256_file, write_json_atomic, write_jsonl
from .corpus import student_pages, teacher_documents
from .problems import make_splits, sample_problems
from .task import DEFAULT_SIZES


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    intermediate: int


@dataclass(frozen=True)
class WorldSpec:
    seed: int = 0
    split_sizes: dict = field(default_factory=lambda: dict(DEFAULT_SIZES))
    vocab_size: int = 600  # 400 split the long-winded style's words into pieces (3-step rationale: 198 tokens, 134 at 600)
    corpus_problems: int = 6000
    teacher: ModelShape = ModelShape(hidden=192, layers=4, heads=4, intermediate=512)
    student: ModelShape = ModelShape(hidden=128, layers=3, heads=4, intermediate=320)
    teacher_docs: int = 24000
    student_pages: int = 12000
    # Share of 1-, 2- and 3-step problems in each corpus. The teacher saw every length, the longest most (its
    # 3-step drafts are malformed more often, so its kept drafts come out near the task's mix); the student's
    # pretraining stops at two steps, like a small general model that has never chained three.
    teacher_op_weights: tuple = (0.15, 0.3, 0.55)
    student_op_weights: tuple = (0.55, 0.45, 0.0)
    # ARTE's premise: how the teacher writes when no technique is asked for. Like a large teacher, it answers
    # outright (terse: no working) or at length (verbose); this student learns nothing from answers alone, and
    # answer-only rows in its data teach it to skip its working (benchmarks/learnability.py measures both), its
    # one-shot accuracy with an answer-only demonstration is low, and DPO can move the teacher away from it.
    teacher_default_styles: dict = field(default_factory=lambda: {"verbose": 0.45, "terse": 0.3, "mistake": 0.15,
                                                                  "step": 0.1})
    teacher_steps: int = 400
    student_steps: int = 400
    batch_size: int = 32
    learning_rate: float = 3e-3
    threads: int = 1  # tiny models on a shared 2-core box: 1 thread is 3-6x faster than 2 under contention

    def scaled(self, factor: float) -> "WorldSpec":
        """A smaller world for tests: fewer documents and steps, same code path."""
        import dataclasses

        return dataclasses.replace(self, corpus_problems=max(200, int(self.corpus_problems * factor)),
                                   teacher_docs=max(64, int(self.teacher_docs * factor)),
                                   student_pages=max(64, int(self.student_pages * factor)),
                                   teacher_steps=max(2, int(self.teacher_steps * factor)),
                                   student_steps=max(2, int(self.student_steps * factor)))


def build_corpora(spec: WorldSpec, eos: str = "</s>") -> dict[str, list[str]]:
    splits = make_splits(spec.seed, spec.split_sizes)
    held_out = {p.question for split in splits.values() for p in split}
    teacher_problems = sample_problems(spec.seed + 1, spec.corpus_problems, spec.teacher_op_weights,
                                       exclude=frozenset(held_out))
    student_problems = sample_problems(spec.seed + 2, spec.corpus_problems, spec.student_op_weights,
                                       exclude=frozenset(held_out))
    rng = random.Random(spec.seed)
    return {"teacher": teacher_documents(teacher_problems, rng, spec.teacher_docs, eos, spec.teacher_default_styles),
            "student": student_pages(student_problems, rng, spec.student_pages, eos)}


def _train(shape: ModelShape, tokenizer, texts: list[str], steps: int, spec: WorldSpec, out: Path) -> dict:
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.heads, max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    data = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], add_special_tokens=False), batched=True, remove_columns=["text"])
    args = TrainingArguments(output_dir=str(out / "_trainer"), max_steps=steps, per_device_train_batch_size=spec.batch_size,
                             learning_rate=spec.learning_rate, lr_scheduler_type="cosine", warmup_ratio=0.05,
                             weight_decay=0.0, logging_steps=max(1, steps // 20), save_strategy="no", report_to=[],
                             seed=spec.seed, data_seed=spec.seed, use_cpu=not torch.cuda.is_available(),
                             dataloader_num_workers=0, disable_tqdm=False)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collator)
    started = time.perf_counter()
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "_trainer", ignore_errors=True)
    return {"parameters": sum(p.numel() for p in model.parameters()), "steps": steps, "losses": losses,
            "final_loss": losses[-1] if losses else None, "seconds": round(time.perf_counter() - started, 1)}


def build_world(out: str | Path, spec: WorldSpec = WorldSpec(), train: bool = True) -> dict:
    """Build the world into `out` (replaced atomically when complete) and return world.json's content."""
    from .tokenizer import train_tokenizer

    out = Path(out)
    torch.set_num_threads(spec.threads)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=out.parent if out.parent.exists() else None))
    try:
        corpora = build_corpora(spec)
        tokenizer = train_tokenizer(corpora["teacher"] + corpora["student"], spec.vocab_size)
        tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / "data").mkdir()
        for name, texts in corpora.items():
            write_jsonl(tmp / "data" / f"{name}_corpus.jsonl", ({"text": t} for t in texts))
        info = {"spec": json.loads(json.dumps(asdict(spec))), "hashes": {
            "tokenizer.json": sha256_file(tmp / "tokenizer" / "tokenizer.json"),
            **{f"{n}_corpus.jsonl": sha256_file(tmp / "data" / f"{n}_corpus.jsonl") for n in corpora}}}
        if train:
            info["teacher"] = _train(spec.teacher, tokenizer, corpora["teacher"], spec.teacher_steps, spec, tmp / "teacher")
            info["student"] = _train(spec.student, tokenizer, corpora["student"], spec.student_steps, spec, tmp / "student")
        write_json_atomic(tmp / "world.json", info)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        out.chmod(0o755)  # mkdtemp creates 0700
        return info
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
