"""Stage `distill`: LoRA + target-matched QAT fine-tuning of the student on the aligned teacher's
data; merge, remove fake quantization, save (safetensors + tokenizer), evaluate."""

from __future__ import annotations

from ..config import RunConfig
from ..distillation import CORRECT_FILE, distill_and_evaluate
from ..evaluate import summary
from ..rundir import RunDir, write_json_atomic


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    folder = run_dir.stage_dir("distill")
    model, tokenizer, record, result = distill_and_evaluate(cfg, run_dir, "aligned", cfg.seed, folder / "trainer",
                                                            cfg.distill.qat)
    # per test question: the ablation pairs this run with the other arms' same-seed runs
    write_json_atomic(folder / CORRECT_FILE, result["correct"])
    model.save_pretrained(folder / "student", safe_serialization=True)
    tokenizer.save_pretrained(folder / "student")
    return {"metrics": {"training": record, "qat": cfg.distill.qat, "student_fp32": summary(result)}}
