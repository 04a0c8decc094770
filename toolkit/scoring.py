"""ARTE's preference signal: a student's one-shot in-context accuracy with a draft as the demo."""

from __future__ import annotations

from typing import Sequence

from .generation import ToolSettings, generate
from .tasks.base import Example, Task


def one_shot_correct(model, tokenizer, task: Task, demos: Sequence[tuple[str, str]],
                     questions: Sequence[Example], *, max_new_tokens: int, batch_size: int,
                     tools: ToolSettings | None = None, description: str = "scoring drafts") -> list[list[bool]]:
    """For each (question, rationale) demo: which of `questions` the student gets right, greedy."""
    prompts = [task.prompt(ex.question, [demo]) for demo in demos for ex in questions]
    completions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           tools=tools, stop=task.style.stop, description=description)
    n = len(questions)
    return [[task.is_correct(c, ex) for c, ex in zip(completions[i * n:(i + 1) * n], questions)]
            for i in range(len(demos))]


def one_shot_accuracy(model, tokenizer, task: Task, demos: Sequence[tuple[str, str]],
                      questions: Sequence[Example], **kwargs) -> list[float]:
    """ARTE's draft score s_r: the student's one-shot accuracy with each demo."""
    return [sum(row) / len(row) for row in one_shot_correct(model, tokenizer, task, demos, questions, **kwargs)]

def _completion_loss(model, tokenizer, prompts: Sequence[str], completions: Sequence[str]):
    """Mean token loss of completions given prompts (prompt tokens masked out: the logit-KD collator's batch)."""
    from .logit_kd import PromptCompletionCollator

    device = next(model.parameters()).device
    batch = PromptCompletionCollator(tokenizer)([{"prompt": p, "completion": c} for p, c in zip(prompts, completions)])
    return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                 labels=batch["labels"].to(device)).loss


def influence_scores(model, tokenizer, task: Task, demos: Sequence[tuple[str, str]], questions: Sequence[Example],
                     *, learning_rate: float = 1e-3, description: str = "influence scoring") -> list[float]:
    """Local data influence (Montessori-Instruct): validation-loss drop after one SGD step on each draft.

    Validation targets are the questions' gold rationales (or answers) in the task's format.
    """
    import torch

    from .progress import track

    val_prompts = [task.prompt(ex.question) for ex in questions]
    val_targets = [" " + (ex.rationale or task.style.wrap_answer(ex.answer)) for ex in questions]
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.train()
    with torch.no_grad():
        base = _completion_loss(model, tokenizer, val_prompts, val_targets).item()
    scores = []
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    for question, rationale in track(demos, description, total=len(demos)):
        optimizer.zero_grad()
        _completion_loss(model, tokenizer, [task.prompt(question)], [" " + rationale]).backward()
        optimizer.step()
        with torch.no_grad():
            after = _completion_loss(model, tokenizer, val_prompts, val_targets).item()
        scores.append(base - after)
        model.load_state_dict(original)
    model.eval()
    return scores
