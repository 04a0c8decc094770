"""The ablation's comparison with its uncertainty: a paired, two-level bootstrap of a difference in accuracy.

Both arms train the same student seeds and answer the same test questions, so the difference is taken
pair by pair (seed s, question q) and resampled at both levels where the variation comes from: seeds
(which student run) and questions (which test items). A Welch test on per-seed means ignores the pairing
and the question sampling; SciPy's ``bootstrap`` resamples one level only, hence this function.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


def paired_difference(treated: Mapping[int, Sequence[bool]], control: Mapping[int, Sequence[bool]],
                      resamples: int = 4000, seed: int = 0) -> dict:
    """Mean of ``treated - control`` accuracy over shared seeds and questions, with a 95% percentile interval.

    ``treated[s][q]`` and ``control[s][q]``: was question ``q`` answered correctly by the student trained
    with seed ``s``. Only seeds present in both arms count; every seed must cover the same questions.
    """
    seeds = sorted(set(treated) & set(control))
    if not seeds:
        raise ValueError("no seed is shared by both arms: nothing to pair")
    a = np.array([np.asarray(treated[s], dtype=float) for s in seeds])
    b = np.array([np.asarray(control[s], dtype=float) for s in seeds])
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"arms must answer the same questions for every seed (shapes {a.shape} vs {b.shape})")
    diff = a - b  # [seed, question]
    n_seeds, n_questions = diff.shape
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    question_draws = rng.integers(0, n_questions, size=(resamples, n_questions))
    # per resample: the chosen seeds' rows, each averaged over the chosen questions
    per_seed = np.stack([diff[:, q].mean(axis=1) for q in question_draws])  # [resample, seed]
    means = np.take_along_axis(per_seed, seed_draws, axis=1).mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": round(float(diff.mean()), 4), "ci95": [round(float(low), 4), round(float(high), 4)],
            "n": {"seeds": n_seeds, "questions": n_questions, "pairs": int(diff.size)},
            "resamples": resamples, "method": "paired bootstrap over student seeds and test questions"}
