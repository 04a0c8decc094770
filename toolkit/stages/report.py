"""Stage `report`: report.json and report.md (with plots) at the run's root, and the bundle that
ships (verified after it is written)."""

from __future__ import annotations

import json

from ..config import RunConfig
from ..evaluate import student_uses_calculator
from ..benchmarks.report import write_report
from ..errors import ArtifactError
from ..progress import console
from ..rundir import RunDir, sha256_file
from ..target import target_path
from ..tasks import load_task


def card_info(cfg: RunConfig, report: dict, calculator: bool, training: dict, annotated: int = 0) -> dict:
    """Model-card fields; `training` is the `distill` record's (the data and loss the shipped student saw),
    `annotated` how many of its examples are TeacherLM annotations of an existing dataset."""
    ab = report["ablation"]
    aligned = ab.get("aligned_teacher") or {}
    temperature = cfg.generate.rationale_temperature
    examples = training.get("examples")
    written = examples - annotated if isinstance(examples, int) else examples
    ablation = (f"ARTE ablation: not measured ({ab['skipped']})." if ab.get("skipped") else
                f"ARTE ablation: aligned-teacher data {aligned.get('mean')} vs original-teacher data "
                f"{(ab.get('original_teacher') or {}).get('mean')} (mean test accuracy over seeds).")
    sources = (f" Besides them, {annotated} TeacherLM annotations (the teacher's `{cfg.elicit.annotate_order}` notes on "
               f"questions of `{cfg.elicit.annotate.path if cfg.elicit.annotate else ''}`, given their answers)."
               if annotated else "")
    return {
        "task": cfg.task.name, "base_model": cfg.student.path,
        "intended_use": f"Answering `{cfg.task.name}` questions on the device described by target `{cfg.target}`, "
                        "run by the bundled edge runtime (onnxruntime + numpy + tokenizers)"
                        + (", with its calculator filling in the results of the model's equations "
                           "(`edge_runtime.py --calculator auto`); every accuracy here was measured that way."
                           if calculator else "."),
        "training_data": f"{written} examples written by the teacher (`{cfg.teacher.path}`) after "
                         "ARTE alignment to this student (DPO on the student's one-shot preferences); "
                         + ("greedy rationales" if temperature == 0 else f"rationales sampled at temperature {temperature}")
                         + " kept only when their answer matched the task's solver." + sources,
        "method": f"LoRA (r={cfg.distill.lora.r}) fine-tuning with trl's {training.get('trainer', 'SFTTrainer')} "
                  f"(loss: {training.get('loss_kind', 'cross-entropy on the completion')})"
                  + (" under torchao fake quantization matching the target's INT8 scheme" if cfg.distill.qat else "")
                  + "; merged, exported with Optimum (text-generation-with-past), quantized with ONNX Runtime. "
                  + ablation,
    }


def _annotated(cfg: RunConfig, run_dir: RunDir) -> int:
    """How many TeacherLM annotations the student trained on (`distill.use_annotations`)."""
    if not (cfg.distill.use_annotations and cfg.elicit.annotate):
        return 0
    return int((run_dir.record("elicit") or {}).get("metrics", {}).get("annotated") or 0)


def _fidelity_reference(run_dir: RunDir) -> dict | None:
    path = run_dir.stage_dir("export") / "fidelity_reference.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    from ..export.bundle import MANIFEST, MANIFEST_SHA, make_bundle, verify_bundle

    report = write_report(run_dir, cfg.target)
    bundle = run_dir.root / "bundle"
    task = load_task(cfg.task)
    calculator = student_uses_calculator(cfg, task)
    training = run_dir.record("distill")["metrics"]["training"]
    # <run>/bundle is the toolkit's own: replace_partial lets a rerun replace one that an older, killed
    # version left half-written (make_bundle itself now builds aside and renames into place).
    make_bundle(run_dir.stage_dir("export") / "quantized", target_path(cfg.target), bundle, report,
                card_info(cfg, report, calculator, training, _annotated(cfg, run_dir)),
                decoding={"calculator": calculator, "prompt": task.style.query, "stop": list(task.style.stop)},
                replace_partial=True, reference=_fidelity_reference(run_dir))
    try:
        verified = verify_bundle(bundle, target_path(cfg.target))
    except ArtifactError as exc:
        # A bundle below the target's fidelity budget fails verify by design; the report already says
        # FAILED (that budget is in it) and `run` exits 1. Any other verify failure right after writing is a bug.
        if exc.where != "fidelity" or report["passed"]:
            raise
        console.print(f"[red]  the bundle fails `tailor verify`: {exc}[/red]")
        verified = {"passed": False, "error": str(exc)}
    manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    shipped = [bundle / name for name in manifest["files"]] + [bundle / MANIFEST, bundle / MANIFEST_SHA]
    return {"metrics": {"passed": report["passed"], "verified": verified["passed"],
                        "verify_error": verified.get("error"),
                        "manifest_sha256": sha256_file(bundle / MANIFEST)},
            "extra_files": [run_dir.root / "report.json", run_dir.root / "report.md", *sorted(shipped)]}
