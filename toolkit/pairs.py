"""ARTE's preference pairs (PAPERS.md, step 3).

- question level: the drafting prompt; chosen from the top quartile of questions by s_q,
  rejected from the bottom quartile (optionally within one difficulty level: see AlignConfig);
- rationale level: the question's plain prompt *without* the technique instruction (prompt
  erasure); chosen = the best-scored rationale, rejected = the worst.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Callable, Sequence

from .drafting import drafting_prompt
from .tasks.base import Example, Task


def question_completion(task: Task, question: str, answer: str, index: int) -> str:
    if task.drafting == "lines":
        return f" {question}\n"
    return f"<input>{question}</input><target>{answer}</target></Question_{index}>"


def question_pairs(task: Task, question_scores: Sequence[dict], answers: dict[str, str], seeds: Sequence[Example],
                   k: int, limit: int, rng: random.Random,
                   difficulty: Callable[[str], int] | None = None) -> list[dict]:
    """Chosen from the top quartile by s_q, rejected from the bottom quartile; with `difficulty`, the
    quartiles are taken within each difficulty level and a pair never crosses levels."""
    levels = defaultdict(list)
    for q in question_scores:
        levels[difficulty(q["question"]) if difficulty else None].append(q)
    strata, weights = [], []
    for group in levels.values():
        ranked = sorted(group, key=lambda q: q["score"], reverse=True)
        quarter = max(1, len(ranked) // 4)
        strata.append((ranked[:quarter], ranked[-quarter:]))
        weights.append(len(group))  # pairs in proportion to how many drafts sit at each level
    pairs = []
    for _ in range(min(limit, sum(len(top) * len(bottom) for top, bottom in strata))):
        top, bottom = strata[0] if len(strata) == 1 else rng.choices(strata, weights)[0]
        chosen, rejected = rng.choice(top), rng.choice(bottom)
        if chosen["score"] <= rejected["score"]:
            continue
        shown = rng.sample(list(seeds), min(k, len(seeds)))
        pairs.append({"kind": "question", "prompt": drafting_prompt(task, shown),
                      "chosen": question_completion(task, chosen["question"], answers[chosen["question"]], len(shown) + 1),
                      "rejected": question_completion(task, rejected["question"], answers[rejected["question"]],
                                                      len(shown) + 1),
                      "score_gap": chosen["score"] - rejected["score"]})
    return pairs


def rationale_pairs(task: Task, drafts: Sequence[dict], min_gap: float,
                    prompt: Callable[[str], str] | None = None) -> list[dict]:
    """Best against worst rationale of each question; the chosen one must be well-formed and correct. `prompt`:
    the erased prompt the teacher writes from (default the task's zero-shot prompt)."""
    prompt = prompt or task.prompt
    by_question = defaultdict(list)
    for d in drafts:
        if d.get("score") is not None:
            by_question[d["question"]].append(d)
    pairs = []
    for question, group in by_question.items():
        group = sorted(group, key=lambda d: d["score"], reverse=True)
        best, worst = group[0], group[-1]
        if not best["correct"] or best["score"] - worst["score"] < min_gap:
            continue
        pairs.append({"kind": "rationale", "prompt": prompt(question), "chosen": " " + best["rationale"],
                      "rejected": " " + worst["rationale"], "score_gap": best["score"] - worst["score"],
                      "chosen_technique": best["technique"], "rejected_technique": worst["technique"]})
    return pairs
