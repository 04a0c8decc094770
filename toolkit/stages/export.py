"""Stage `export`: the distilled student to ONNX through Optimum (KV cache), fp32 parity against
PyTorch, the graph the target ships (attention-fused unless it says unfused or fusion fails),
quantization as the target says, and the quantized model's accuracy measured through the edge
runtime; if the accuracy drop breaks the target's budget, the configured fallbacks are tried
(output head kept in fp32)."""

from __future__ import annotations

import shutil

from ..config import RunConfig
from ..evaluate import binomial_stderr, student_uses_calculator
from ..hostcpu import kernel_record
from ..progress import console
from ..rundir import RunDir
from ..target import load_target, target_path
from ..tasks import load_task


def edge_accuracy(model_dir, task, examples, cfg: RunConfig, model_file: str = "model.onnx",
                  calculator: bool | None = None) -> dict:
    """Accuracy of an ONNX model on `examples` with the edge runtime (batched greedy decoding), with the
    calculator when `calculator` (default: as the config and task say for the student)."""
    from ..export.runtime import Calculator, EdgeModel

    if calculator is None:
        calculator = student_uses_calculator(cfg, task)
    model = EdgeModel.load(model_dir, model_file=model_file)
    prompts = [task.prompt(ex.question) for ex in examples]
    results = model.generate_batch(prompts, max_new_tokens=cfg.evaluate.max_new_tokens, stop=list(task.style.stop),
                                   batch_size=cfg.evaluate.batch_size,
                                   logits_processor=Calculator(model) if calculator else None)
    correct = [task.is_correct(r.text, ex) for r, ex in zip(results, examples)]
    acc = sum(correct) / len(correct)
    return {"accuracy": round(acc, 4), "stderr": round(binomial_stderr(acc, len(correct)), 4), "n": len(correct),
            "model_file": model_file, "calculator": calculator}


def fallbacks(target):
    """Quantization settings to try in order: the target's own, then the output head in fp32."""
    yield "target", target
    if target.quant.quantize_lm_head:
        quant = target.quant.model_copy(update={"quantize_lm_head": False})
        yield "lm_head_fp32", target.model_copy(update={"quant": quant})


def run(cfg: RunConfig, run_dir: RunDir) -> dict:
    from ..export.fusion import graph_to_ship
    from ..export.onnx_export import check_parity, export_onnx
    from ..export.quantize import quantize_for_target

    folder = run_dir.stage_dir("export")
    task = load_task(cfg.task)
    target = load_target(cfg.target)
    student_dir = run_dir.stage_dir("distill") / "student"
    fp32_dir = export_onnx(student_dir, folder / "fp32")
    prompts = [task.prompt(ex.question) for ex in task.test[: cfg.export.parity_prompts]]
    parity = check_parity(student_dir, fp32_dir, prompts, max_new_tokens=cfg.export.parity_tokens)
    graph_dir, graph = graph_to_ship(fp32_dir, folder / "fused", target.export.attention,
                                     [task.prompt(ex.question) for ex in task.test[:8]])
    if graph.get("why"):
        console.print(f"[yellow]  shipping the unfused graph: {graph['why']}[/yellow]")
    test = task.test[: cfg.evaluate.test_questions]
    fp32_acc = run_dir.record("distill")["metrics"]["student_fp32"]["accuracy"]
    calibration = [task.prompt(ex.question) for ex in task.preference[: cfg.export.calibration_samples]]
    budget = target.budgets.max_accuracy_drop
    attempts = []
    for name, candidate in fallbacks(target):
        out = folder / "quantized"
        shutil.rmtree(out, ignore_errors=True)
        info = quantize_for_target(graph_dir, out, candidate, calibration_texts=calibration)
        shutil.copy2(target_path(cfg.target), out / "target.toml")  # edge runtime session settings
        accuracy = {m: edge_accuracy(out, task, test, cfg, m) for m in info["files"]}
        drop = round(fp32_acc - accuracy["model.onnx"]["accuracy"], 4)
        attempts.append({"setting": name, "quantization": info, "accuracy": accuracy, "drop": drop})
        if budget is None or drop <= budget:
            break
        console.print(f"[yellow]  INT8 accuracy drop {drop:.3f} > budget {budget:.3f} with '{name}'; "
                      "trying the next fallback[/yellow]")
    final = attempts[-1]
    if budget is not None and final["drop"] > budget:
        console.print(f"[red]  INT8 accuracy drop {final['drop']:.3f} still exceeds the target's max_accuracy_drop "
                      f"{budget:.3f} after {len(attempts)} setting(s); the gate will fail[/red]")
    return {"metrics": {"parity": parity, "graph": graph, "attempts": attempts, "chosen": final["setting"],
                        "kernel": kernel_record(target),  # the CPU the INT8 accuracy was measured on
                        "student_int8": final["accuracy"]["model.onnx"],
                        "weight_only": {k: v for k, v in final["accuracy"].items() if k != "model.onnx"},
                        "accuracy_drop": final["drop"]}}
