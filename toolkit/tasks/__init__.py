"""Tasks: the embedded arithmetic world and loaders for the formats users bring."""

from __future__ import annotations

from ..config import TaskSpec
from ..errors import InputError
from .base import Example, PromptStyle, Task


def load_task(spec: TaskSpec) -> Task:
    if spec.name == "toy-arith":
        from ..toyworld.task import toy_task

        return toy_task(spec.seed)
    if not spec.path:
        raise InputError("config", "task.path", f"task '{spec.name}' needs a data file")
    if spec.name == "bbh":
        from .bbh import load_bbh

        return load_bbh(spec.path, spec.cot_prompt, seed=spec.seed)
    if spec.name == "gsm8k":
        from .gsm8k import load_gsm8k

        return load_gsm8k(spec.path, seed=spec.seed)
    from .multiple_choice import load_multiple_choice

    return load_multiple_choice(spec.path, seed=spec.seed)


__all__ = ["Example", "PromptStyle", "Task", "load_task"]
