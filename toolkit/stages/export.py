"""Stage `export`: the distilled student to ONNX through Optimum (KV cache), fp32 parity against
PyTorch, the graph the target ships (attention-fused unless it says unfused or fusion fails), then
the candidate quantizations: the target's own scheme first, then fallbacks (output head in fp32,
8-bit weight-only blocks). Each is measured for fidelity to the fp32 graph (top-1 agreement and KL
per position on held-out sequences) and, where that holds, for accuracy through the edge runtime; the first that holds
the target's budgets ships in `export/quantized/`, every one tried is recorded, and a 4-bit variant
is measured beside them for the accuracy-latency picture."""

from __future__ import annotations

import json
import shutil

from ..config import RunConfig
from ..hostcpu import kernel_record
from ..progress import console
from ..rundir import RunDir, write_json_atomic
from ..target import Target, load_target, target_path
from ..tasks import load_task

REFERENCE = "fidelity_reference.json"
MEASURED_ONLY = ("weight_only_4bit",)  # measured for the report, never shipped in place of the target's INT8


def candidates(target: Target) -> list[tuple[str, Target]]:
    """Quantizations to try, in the order they are preferred: what QAT simulated comes first."""
    from ..export.quantize import weight_only_variant

    q = target.quant
    out = [("target", target)]
    weight_only = q.activations.dtype == "none" or q.weights.dtype == "int4"
    if q.quantize_lm_head and not weight_only:
        out.append(("lm_head_fp32", target.model_copy(update={"quant": q.model_copy(update={"quantize_lm_head": False})})))
    if not weight_only:
        out.append(("weight_only_8bit", weight_only_variant(target, 8)))
    out.append(("weight_only_4bit", weight_only_variant(target, 4)))
    return out


def faithful(fid: dict, target: Target) -> bool:
    """Whether a quantized file's fidelity to the fp32 graph keeps the target's top-1 and KL budgets."""
    b = target.budgets
    return ((b.max_top1_disagreement is None or 1 - fid["top1_agreement"] <= b.max_top1_disagreement)
            and (b.max_mean_kl is None or fid["mean_kl"] <= b.max_mean_kl))


def holds(attempt: dict, target: Target) -> bool:
    """Whether an attempt keeps the target's accuracy and fidelity budgets (an unscored one does not)."""
    b = target.budgets
    return (faithful(attempt["fidelity"], target) and attempt["drop"] is not None
            and (b.max_accuracy_drop is None or attempt["drop"] <= b.max_accuracy_drop))


def choose(attempts: list[dict]) -> tuple[dict, bool]:
    """The first shippable attempt that holds every budget; else the scored shippable one with the smallest
    accuracy drop (the most faithful one when none was scored), and False (the gate will fail)."""
    shippable = [a for a in attempts if not a["measured_only"]]
    held = [a for a in shippable if a["holds"]]
    if held:
        return held[0], True
    scored = [a for a in shippable if a["drop"] is not None]
    return (min(scored, key=lambda a: a["drop"]) if scored
            else min(shippable, key=lambda a: a["fidelity"]["mean_kl"])), False


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    from ..benchmarks.accuracy import edge_accuracy
    from ..export.fidelity import decode_starts, fidelity, fp32_reference, reference_sequences
    from ..export.fusion import graph_to_ship
    from ..export.onnx_export import check_parity
    from ..export.quantize import quantize_for_target
    from ..distillation import held_out_prompts
    from ..qat_vs_ptq import export_student

    folder = run_dir.stage_dir("export")
    task = load_task(cfg.task)
    target = load_target(cfg.target)
    student_dir = run_dir.stage_dir("distill") / "student"
    # with the prompt format the student was trained and evaluated with: copied into every graph and the bundle
    fp32_dir = export_student(cfg, student_dir, folder / "fp32")
    prompts = [task.prompt(ex.question) for ex in task.test[: cfg.export.parity_prompts]]
    parity = check_parity(student_dir, fp32_dir, prompts, max_new_tokens=cfg.export.parity_tokens)
    graph_dir, graph = graph_to_ship(fp32_dir, folder / "fused", target.export.attention,
                                     [task.prompt(ex.question) for ex in task.test[: cfg.export.fusion_check_prompts]])
    if graph.get("why"):
        console.print(f"[yellow]  shipping the unfused graph: {graph['why']}[/yellow]")
    shutil.copy2(target_path(cfg.target), graph_dir / "target.toml")  # so `bench` can time the fp32 graph too
    held_out = held_out_prompts(cfg, run_dir, task)
    sequences = reference_sequences(graph_dir, held_out, cfg.export.fidelity_tokens)
    starts = decode_starts(graph_dir, held_out)
    write_json_atomic(folder / REFERENCE, fp32_reference(graph_dir, sequences, starts))  # shipped: `verify` rechecks the same figure
    test = task.test[: cfg.evaluate.test_questions]
    fp32_acc = run_dir.record("distill")["metrics"]["student_fp32"]["accuracy"]
    calibration = [task.prompt(ex.question) for ex in task.preference[: cfg.export.calibration_samples]]

    def score(attempt: dict, out) -> None:
        results = {m: edge_accuracy(out, task, test, cfg, m) for m in attempt["quantization"]["files"]}
        attempt["accuracy"] = {m: _without_items(r) for m, r in results.items()}
        attempt["drop"] = round(fp32_acc - attempt["accuracy"]["model.onnx"]["accuracy"], 4)
        attempt["drop_paired"] = _paired_drop(run_dir, results["model.onnx"]["correct"])
        attempt.pop("accuracy_not_measured", None)

    attempts = []
    for name, candidate in candidates(target):
        if not cfg.export.try_all and name not in MEASURED_ONLY and any(a["holds"] for a in attempts):
            continue
        out = folder / "attempts" / name
        shutil.rmtree(out, ignore_errors=True)
        info = quantize_for_target(graph_dir, out, candidate, calibration_texts=calibration)
        shutil.copy2(target_path(cfg.target), out / "target.toml")  # edge runtime session settings
        attempt = {"setting": name, "quantization": info,
                   "fidelity": fidelity(graph_dir, out, "model.onnx", sequences, decode_from=starts), "shipped": False,
                   "measured_only": name in MEASURED_ONLY, "accuracy": None, "drop": None, "drop_paired": None}
        if attempt["measured_only"] or faithful(attempt["fidelity"], target):
            score(attempt, out)
        else:  # a file that breaks the fidelity budgets cannot ship whatever it scores: a pass over the test split saved
            attempt["accuracy_not_measured"] = "breaks the fidelity budgets"
        attempt["holds"] = holds(attempt, target)
        attempts.append(attempt)
        drop = "not scored" if attempt["drop"] is None else f"{attempt['drop']:+.3f}"
        every = attempt["fidelity"]["all_positions"]
        console.print(f"  {name}: accuracy drop {drop}, top-1 agreement {attempt['fidelity']['top1_agreement']:.3f}, "
                      f"KL {attempt['fidelity']['mean_kl']:.4f} at decode positions (every position: "
                      f"{every['top1_agreement']:.3f}, {every['mean_kl']:.4f})"
                      + ("" if attempt["holds"] else " (breaks a budget)"))
    chosen, held = choose(attempts)
    if not held:
        console.print(f"[red]  no quantization held the target's accuracy and fidelity budgets; shipping "
                      f"'{chosen['setting']}' (the closest to them): the gate will fail[/red]")
    if chosen["accuracy"] is None:  # the report states the accuracy of whatever ships
        score(chosen, folder / "attempts" / chosen["setting"])
    chosen["shipped"] = True
    shipped = folder / "quantized"
    shutil.rmtree(shipped, ignore_errors=True)
    shutil.copytree(folder / "attempts" / chosen["setting"], shipped)
    return {"metrics": {"parity": parity, "graph": graph, "attempts": attempts, "chosen": chosen["setting"],
                        "kernel": kernel_record(target),  # the CPU the INT8 accuracy was measured on
                        "fidelity": chosen["fidelity"], "student_int8": chosen["accuracy"]["model.onnx"],
                        "weight_only": {k: v for k, v in chosen["accuracy"].items() if k != "model.onnx"},
                        "accuracy_drop": chosen["drop"], "accuracy_drop_paired": chosen["drop_paired"]}}


def _paired_drop(run_dir: RunDir, quantized: list[bool]) -> dict | None:
    """fp32 minus quantized accuracy paired by test question, with its bootstrap 95% interval: the same
    questions answered twice, so the interval is far narrower than either accuracy's sampling error."""
    from ..distillation import CORRECT_FILE
    from ..paired import paired_difference

    path = run_dir.stage_dir("distill") / CORRECT_FILE
    if not path.is_file():
        return None
    fp32 = json.loads(path.read_text(encoding="utf-8"))
    if len(fp32) != len(quantized):
        return None  # distill scored another test split size: nothing to pair
    d = paired_difference({0: fp32}, {0: quantized})
    return {"mean": d["mean"], "ci95": d["ci95"], "questions": d["n"]["questions"],
            "fp32_only_right": sum(a and not b for a, b in zip(fp32, quantized)),
            "quantized_only_right": sum(b and not a for a, b in zip(fp32, quantized))}


def _without_items(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "correct"}
