"""The ablation's comparison with its uncertainty: a paired, multi-level bootstrap of a difference in accuracy.

Both arms train the same student seeds and answer the same test questions, so the difference is taken
pair by pair (seed s, question q) and resampled at every level where the variation comes from: teacher
seeds (which DPO run wrote the treated arm's data, where there are several), student seeds (which student
run) and questions (which test items). A Welch test on per-seed means ignores the pairing and the question
sampling; SciPy's ``bootstrap`` resamples one level only, hence this function.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def paired_difference(treated: Mapping, control: Mapping[int, Sequence[bool]], resamples: int = 4000,
                      seed: int = 0) -> dict:
    """Mean of ``treated - control`` accuracy over shared seeds and questions, with a 95% percentile interval.

    ``control[s][q]``: was question ``q`` answered correctly by the student trained with seed ``s``.
    ``treated[s][q]`` likewise, or ``treated[t][s][q]`` when the treated arm has several teacher seeds ``t``
    (each paired with the same control run of student seed ``s``); the teacher seeds are then resampled too.
    Only student seeds present in both arms (and, nested, in every teacher seed) count; every run must
    cover the same questions.
    """
    nested = bool(treated) and isinstance(next(iter(treated.values())), Mapping)
    by_teacher = treated if nested else {0: treated}
    seeds = sorted(set(control).intersection(*(set(runs) for runs in by_teacher.values())))
    if not seeds:
        raise ValueError("no seed is shared by both arms: nothing to pair")
    b = np.array([np.asarray(control[s], dtype=float) for s in seeds])
    try:
        a = np.array([[np.asarray(runs[s], dtype=float) for s in seeds] for runs in by_teacher.values()])
    except ValueError:  # ragged: some run answered other questions
        a = np.empty(0)
    if a.shape[1:] != b.shape or b.ndim != 2 or b.shape[1] == 0:
        raise ValueError(f"arms must answer the same questions for every seed (shapes {a.shape} vs {b.shape})")
    diff = a - b[None]  # [teacher seed, student seed, question]
    n_teachers, n_seeds, n_questions = diff.shape
    rng = np.random.default_rng(seed)
    teacher_draws = rng.integers(0, n_teachers, size=(resamples, n_teachers))
    seed_draws = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    question_draws = rng.integers(0, n_questions, size=(resamples, n_questions))
    means = np.empty(resamples)
    for r in range(resamples):
        per_run = diff[:, :, question_draws[r]].mean(axis=2)  # [teacher, student] over the chosen questions
        means[r] = per_run[teacher_draws[r]][:, seed_draws[r]].mean()
    low, high = np.percentile(means, [2.5, 97.5])
    levels = "teacher seeds, student seeds and test questions" if nested else "student seeds and test questions"
    n = {"seeds": n_seeds, "questions": n_questions, "pairs": int(diff.size)}
    if nested:
        n = {"teacher_seeds": n_teachers, **n}
    return {"mean": round(float(diff.mean()), 4), "ci95": [round(float(low), 4), round(float(high), 4)],
            "n": n, "resamples": resamples, "method": f"paired bootstrap over {levels}"}
