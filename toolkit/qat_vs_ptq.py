"""QAT against PTQ on this run's student (opt-in: `distill.compare_ptq`).

Arms, all trained like `distill` (same rows, seed, steps and LoRA): `ptq` without fake quantization,
`qat_target` with the target's own scheme faked (the `distill` stage's student, when `distill.qat`),
`qat_weight_only_4bit` with the 4-bit block scheme faked. Each arm is exported, quantized with each
scheme it is compared under and measured against its own fp32 graph on the export's held-out prompts
(top-1 agreement and KL at decode positions, `edge_tailor.export.fidelity`): QAT's question is whether
training through the rounding makes the quantized file closer to the model it came from.

The arms' graphs are the exported (unfused) ones: attention fusion leaves the fp32 tokens unchanged
and quantization rounds the same weights either way, and fusing each arm would cost ~1.5 min more.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .config import RunConfig
from .distillation import held_out_prompts, train_on
from .progress import console
from .rundir import RunDir
from .target import Target, load_target

SCHEMES = ("target", "weight_only_4bit")  # the target's INT8 scheme and the 4-bit candidate export measures


def scheme_target(target: Target, scheme: str) -> Target:
    from .export.quantize import weight_only_variant

    return target if scheme == "target" else weight_only_variant(target, 4)


def export_student(cfg: RunConfig, student_dir: Path, out: Path) -> Path:
    """The student to an fp32 ONNX folder with the prompt format it was trained with."""
    from .export.onnx_export import export_onnx
    from .export.runtime import PROMPT_FORMAT
    from .models import load_tokenizer
    from .prompt_format import format_of

    fp32_dir = export_onnx(student_dir, out)
    fmt = format_of(load_tokenizer(str(student_dir), cfg.student))
    (fp32_dir / PROMPT_FORMAT).write_text(json.dumps(fmt.to_json(), indent=1) + "\n", encoding="utf-8")
    return fp32_dir


def compare(cfg: RunConfig, run_dir: RunDir, folder: Path) -> dict:
    """Train the arms `distill` did not, measure every arm under its schemes; the large files are removed."""
    from .export.fidelity import decode_starts, fidelity, reference_sequences
    from .export.quantize import quantize_for_target
    from .tasks import load_task

    target = load_target(cfg.target)
    task = load_task(cfg.task)
    held_out = held_out_prompts(cfg, run_dir, task)
    calibration = [task.prompt(ex.question) for ex in task.preference[: cfg.export.calibration_samples]]
    arms = {"ptq": (None, SCHEMES), "qat_target": ("target", ("target",)),
            "qat_weight_only_4bit": ("weight_only_4bit", ("weight_only_4bit",))}
    out: dict = {"held_out_prompts": len(held_out), "graph": "the exported, unfused", "arms": {}}
    for arm, (faked, schemes) in arms.items():
        work = folder / arm
        shutil.rmtree(work, ignore_errors=True)
        if arm == "qat_target":
            student_dir, training = run_dir.stage_dir("distill") / "student", "the distill stage's student"
        else:
            console.print(f"  training the {arm} arm ...")
            quant = None if faked is None else scheme_target(target, faked).quant
            model, tokenizer, record = train_on(cfg, run_dir, "aligned", cfg.seed, work / "trainer", quant)
            student_dir = work / "student"
            model.save_pretrained(student_dir, safe_serialization=True)
            tokenizer.save_pretrained(student_dir)
            training = {k: record[k] for k in ("examples", "steps", "fake_quantized_linears")} | \
                {"last_loss": record["loss"][-1] if record["loss"] else None}
        fp32_dir = export_student(cfg, student_dir, work / "fp32")
        sequences = reference_sequences(fp32_dir, held_out, cfg.export.fidelity_tokens)
        starts = decode_starts(fp32_dir, held_out)
        measured = {}
        for scheme in schemes:
            quantized = work / scheme
            quantize_for_target(fp32_dir, quantized, scheme_target(target, scheme), calibration_texts=calibration)
            f = fidelity(fp32_dir, quantized, "model.onnx", sequences, decode_from=starts)
            measured[scheme] = {"top1_agreement": f["top1_agreement"], "mean_kl": f["mean_kl"],
                                "positions": f["positions"]}
            console.print(f"  {arm} under {scheme}: top-1 {f['top1_agreement']:.3f}, KL {f['mean_kl']:.4f}")
        out["arms"][arm] = {"fake_quantization": faked, "training": training, "fidelity": measured}
        for leftover in [work / "student", work / "fp32", work / "trainer", *(work / s for s in schemes)]:
            shutil.rmtree(leftover, ignore_errors=True)  # ~1 GB an arm for a 135M student; only the figures stay
    out["by_scheme"] = {s: {"ptq": out["arms"]["ptq"]["fidelity"][s],
                            "qat": out["arms"][f"qat_{s}"]["fidelity"][s]} for s in SCHEMES}
    return out
