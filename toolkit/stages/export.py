"""Stage `export`: the distilled student to ONNX through Optimum (KV cache), fp32 parity against
PyTorch, the graph the target ships (attention-fused unless it says unfused or fusion fails), then
the candidate quantizations: the target's own scheme first, then fallbacks (output head in fp32,
8-bit weight-only blocks). Each is measured for fidelity to the fp32 graph (top-1 agreement and KL
per position on held-out sequences) and for accuracy through the edge runtime; the first that holds
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


def holds(attempt: dict, target: Target) -> bool:
    """Whether an attempt keeps the target's accuracy and fidelity budgets."""
    b, fid = target.budgets, attempt["fidelity"]
    return ((b.max_accuracy_drop is None or attempt["drop"] <= b.max_accuracy_drop)
            and (b.max_top1_disagreement is None or 1 - fid["top1_agreement"] <= b.max_top1_disagreement)
            and (b.max_mean_kl is None or fid["mean_kl"] <= b.max_mean_kl))


def choose(attempts: list[dict]) -> tuple[dict, bool]:
    """The first shippable attempt that holds every budget; else the shippable one with the smallest accuracy
    drop, and False (the gate will fail)."""
    shippable = [a for a in attempts if not a["measured_only"]]
    held = [a for a in shippable if a["holds"]]
    return (held[0], True) if held else (min(shippable, key=lambda a: a["drop"]), False)


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    from ..benchmarks.accuracy import edge_accuracy
    from ..export.fidelity import decode_starts, fidelity, fp32_reference, reference_sequences
    from ..export.fusion import graph_to_ship
    from ..export.onnx_export import check_parity, export_onnx
    from ..export.quantize import quantize_for_target
    from ..export.runtime import PROMPT_FORMAT
    from ..models import load_tokenizer
    from ..prompt_format import format_of

    folder = run_dir.stage_dir("export")
    task = load_task(cfg.task)
    target = load_target(cfg.target)
    student_dir = run_dir.stage_dir("distill") / "student"
    fp32_dir = export_onnx(student_dir, folder / "fp32")
    # the prompt format the student was trained and evaluated with; copied into every graph and the bundle
    fmt = format_of(load_tokenizer(str(student_dir), cfg.student))
    (fp32_dir / PROMPT_FORMAT).write_text(json.dumps(fmt.to_json(), indent=1) + "\n", encoding="utf-8")
    prompts = [task.prompt(ex.question) for ex in task.test[: cfg.export.parity_prompts]]
    parity = check_parity(student_dir, fp32_dir, prompts, max_new_tokens=cfg.export.parity_tokens)
    graph_dir, graph = graph_to_ship(fp32_dir, folder / "fused", target.export.attention,
                                     [task.prompt(ex.question) for ex in task.test[:8]])
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

    attempts = []
    for name, candidate in candidates(target):
        if not cfg.export.try_all and name not in MEASURED_ONLY and any(a["holds"] for a in attempts):
            continue
        out = folder / "attempts" / name
        shutil.rmtree(out, ignore_errors=True)
        info = quantize_for_target(graph_dir, out, candidate, calibration_texts=calibration)
        shutil.copy2(target_path(cfg.target), out / "target.toml")  # edge runtime session settings
        results = {m: edge_accuracy(out, task, test, cfg, m) for m in info["files"]}
        accuracy = {m: _without_items(r) for m, r in results.items()}
        attempt = {"setting": name, "quantization": info, "accuracy": accuracy,
                   "drop": round(fp32_acc - accuracy["model.onnx"]["accuracy"], 4),
                   "drop_paired": _paired_drop(run_dir, results["model.onnx"]["correct"]),
                   "fidelity": fidelity(graph_dir, out, "model.onnx", sequences, decode_from=starts), "shipped": False,
                   "measured_only": name in MEASURED_ONLY}
        attempt["holds"] = holds(attempt, target)
        attempts.append(attempt)
        console.print(f"  {name}: accuracy drop {attempt['drop']:+.3f}, top-1 agreement "
                      f"{attempt['fidelity']['top1_agreement']:.3f}, KL {attempt['fidelity']['mean_kl']:.4f} "
                      f"at decode positions (every position: {attempt['fidelity']['all_positions']['top1_agreement']:.3f}, "
                      f"{attempt['fidelity']['all_positions']['mean_kl']:.4f})"
                      + ("" if attempt["holds"] else " (breaks a budget)"))
    chosen, held = choose(attempts)
    if not held:
        console.print(f"[red]  no quantization held the target's accuracy and fidelity budgets; shipping "
                      f"'{chosen['setting']}' (smallest accuracy drop): the gate will fail[/red]")
    chosen["shipped"] = True
    shipped = folder / "quantized"
    shutil.rmtree(shipped, ignore_errors=True)
    shutil.copytree(folder / "attempts" / chosen["setting"], shipped)
    return {"metrics": {"parity": parity, "graph": graph, "attempts": attempts, "chosen": chosen["setting"],
                        "kernel": kernel_record(target),  # the CPU the INT8 accuracy was measured on
                        "fidelity": chosen["fidelity"], "student_int8": chosen["accuracy"]["model.onnx"],
                        "weight_only": {k: v for k, v in chosen["accuracy"].items() if k != "model.onnx"},
                        "accuracy_drop": chosen["drop"], "accuracy_drop_paired": chosen["drop_paired"]}}


def held_out_prompts(cfg: RunConfig, run_dir: RunDir, task) -> list[str]:
    """Prompts for fidelity that the student neither trained on (annotated preference questions are training
    data) nor is scored on: the preference split, then the test split beyond `evaluate.test_questions`."""
    from ..distillation import training_rows

    from ..errors import InputError

    trained = {row["prompt"] for row in training_rows(cfg, run_dir, "aligned")}
    pool = task.preference + task.test[cfg.evaluate.test_questions:]
    prompts = [p for p in (task.prompt(ex.question) for ex in pool) if p not in trained]
    if not prompts:
        raise InputError("config", "evaluate.test_questions",
                         f"no held-out prompt left for the fidelity check: the {len(task.preference)} preference "
                         f"questions are training data and the test split has no question beyond the first "
                         f"{cfg.evaluate.test_questions}; lower evaluate.test_questions")
    return prompts[: cfg.export.fidelity_prompts]


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
