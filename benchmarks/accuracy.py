"""Accuracy of an ONNX model on a task split through the edge runtime (batched greedy decoding), scored
with the task's own extractor: what the export stage, `tailor bench BUNDLE` and the tests measure."""

from __future__ import annotations

from edge_tailor.evaluate import binomial_stderr, student_uses_calculator
from edge_tailor.export.runtime import Calculator, EdgeModel


def edge_accuracy(model_dir, task, examples, cfg, model_file: str = "model.onnx",
                  calculator: bool | None = None) -> dict:
    """Accuracy with the calculator when `calculator` (default: as the config and task say for the student)."""
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
            "model_file": model_file, "calculator": calculator, "correct": correct}
