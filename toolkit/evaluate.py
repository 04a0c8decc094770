"""Accuracy of a model on a task split with the task's extractor, batched, with its sampling error."""

from __future__ import annotations

import math
from typing import Sequence

from .generation import ToolSettings, generate
from .tasks.base import Example, Task


def student_tools(calculator: bool | None, task: Task) -> ToolSettings | None:
    """The tools the student decodes with: the calculator when the config (or else the task) says so."""
    on = task.calculator if calculator is None else calculator
    return ToolSettings(calculator=True, grounding=False) if on else None


def student_uses_calculator(cfg, task: Task) -> bool:
    return student_tools(cfg.evaluate.calculator, task) is not None


def binomial_stderr(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def score_completions(task: Task, examples: Sequence[Example], completions: Sequence[str]) -> dict:
    correct = [task.is_correct(c, ex) for c, ex in zip(completions, examples)]
    answered = sum(task.extract(c) is not None for c in completions)
    acc = sum(correct) / len(correct) if correct else 0.0
    return {"accuracy": acc, "stderr": binomial_stderr(acc, len(correct)), "n": len(correct),
            "answered": answered / len(correct) if correct else 0.0, "correct": correct}


def evaluate_model(model, tokenizer, task: Task, examples: Sequence[Example], *, max_new_tokens: int,
                   batch_size: int, demos: Sequence[tuple[str, str]] = (), tools: ToolSettings | None = None,
                   solutions=None, description: str = "evaluating") -> dict:
    """Greedy zero- (or few-) shot accuracy; returns accuracy, stderr, n and the completions."""
    prompts = [task.prompt(ex.question, demos) for ex in examples]
    completions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           tools=tools, solutions=solutions, stop=task.style.stop,
                           description=description)
    result = score_completions(task, examples, completions)
    result["tools"] = "+".join(name for name in ("calculator", "grounding") if tools and getattr(tools, name)) or "none"
    result["completions"] = completions
    return result


def summary(result: dict) -> dict:
    """The JSON-friendly part of an evaluation (no per-item lists)."""
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()
            if k not in ("correct", "completions")}

