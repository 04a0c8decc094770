"""The ablation's paired bootstrap: the interval covers the difference, shrinks with pairing, and sees seeds."""

import numpy as np
import pytest

from edge_tailor.paired import paired_difference


def _arm(rng, p_by_seed, n):
    return {s: list(rng.random(n) < p) for s, p in p_by_seed.items()}


def test_a_real_gap_gives_an_interval_that_excludes_zero_and_covers_it():
    rng = np.random.default_rng(1)
    treated = _arm(rng, {0: 0.60, 1: 0.61, 2: 0.59}, 1000)
    control = _arm(rng, {0: 0.50, 1: 0.51, 2: 0.49}, 1000)
    d = paired_difference(treated, control, resamples=2000)
    low, high = d["ci95"]
    assert 0 < low < 0.10 < high and low < d["mean"] < high
    assert d["n"] == {"seeds": 3, "questions": 1000, "pairs": 3000}


def test_no_gap_gives_an_interval_around_zero_and_identical_arms_a_point():
    rng = np.random.default_rng(2)
    treated, control = _arm(rng, {0: 0.5, 1: 0.5, 2: 0.5}, 600), _arm(rng, {0: 0.5, 1: 0.5, 2: 0.5}, 600)
    low, high = paired_difference(treated, control)["ci95"]
    assert low < 0 < high
    same = paired_difference(treated, treated)
    assert same["mean"] == 0.0 and same["ci95"] == [0.0, 0.0]


def test_pairing_removes_the_shared_question_difficulty():
    # both arms get the hard questions wrong and the easy ones right; they differ on a few: paired, the
    # interval is far narrower than the per-arm sampling error (~0.016 at n = 1000) would make it unpaired
    rng = np.random.default_rng(3)
    easy = rng.random(1000) < 0.5
    flips = rng.random(1000) < 0.04
    treated = {s: list(easy | flips) for s in range(3)}
    control = {s: list(easy) for s in range(3)}
    d = paired_difference(treated, control)
    assert d["ci95"][1] - d["ci95"][0] < 0.03 and d["ci95"][0] > 0


def test_seed_spread_widens_the_interval():
    rng = np.random.default_rng(4)
    control = _arm(rng, {0: 0.5, 1: 0.5, 2: 0.5}, 1000)
    steady = _arm(rng, {0: 0.55, 1: 0.55, 2: 0.55}, 1000)
    erratic = _arm(rng, {0: 0.40, 1: 0.55, 2: 0.70}, 1000)
    width = lambda d: d["ci95"][1] - d["ci95"][0]  # noqa: E731
    assert width(paired_difference(erratic, control)) > 2 * width(paired_difference(steady, control))


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="no seed is shared"):
        paired_difference({0: [True]}, {1: [True]})
    with pytest.raises(ValueError, match="same questions"):
        paired_difference({0: [True, False]}, {0: [True]})


def test_teacher_seeds_are_paired_with_the_same_control_and_their_spread_widens_the_interval():
    rng = np.random.default_rng(5)
    control = _arm(rng, {0: 0.5, 1: 0.5, 2: 0.5}, 1000)
    agreeing = {t: _arm(rng, {0: 0.6, 1: 0.6, 2: 0.6}, 1000) for t in range(3)}
    split = {t: _arm(rng, {0: p, 1: p, 2: p}, 1000) for t, p in enumerate((0.45, 0.6, 0.75))}
    d = paired_difference(agreeing, control, resamples=2000)
    assert d["n"] == {"teacher_seeds": 3, "seeds": 3, "questions": 1000, "pairs": 9000}
    assert 0.05 < d["ci95"][0] < 0.10 < d["ci95"][1] < 0.15 and "teacher seeds" in d["method"]
    width = lambda d: d["ci95"][1] - d["ci95"][0]  # noqa: E731
    # the same mean difference, but one teacher seed's data hurt: only resampling teachers can see that
    assert width(paired_difference(split, control)) > 3 * width(d)
    # one teacher seed is the two-level bootstrap
    assert paired_difference({0: agreeing[0]}, control)["ci95"] == paired_difference(agreeing[0], control)["ci95"]


def test_a_teacher_seed_missing_a_student_seed_drops_that_seed():
    rng = np.random.default_rng(6)
    control = _arm(rng, {0: 0.5, 1: 0.5}, 50)
    d = paired_difference({0: _arm(rng, {0: 0.5, 1: 0.5}, 50), 1: _arm(rng, {0: 0.5}, 50)}, control)
    assert d["n"]["seeds"] == 1
