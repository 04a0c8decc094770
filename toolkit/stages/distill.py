"""Stage `distill`: LoRA + target-matched QAT fine-tuning of the student on the aligned teacher's
data; merge, remove fake quantization, save (safetensors + tokenizer), evaluate."""

from __future__ import annotations

from ..config import RunConfig
from ..distillation import distill_and_evaluate
from ..evaluate import summary
from ..rundir import RunDir


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("distill")
    model, tokenizer, record, result = distill_and_evaluate(cfg, run_dir, "aligned", cfg.seed, folder / "trainer",
                                                            cfg.distill.qat)
    model.save_pretrained(folder / "student", safe_serialization=True)
    tokenizer.save_pretrained(folder / "student")
    return {"metrics": {"training": record, "qat": cfg.distill.qat, "student_fp32": summary(result)}}
