"""The statistics of the verdict on cases with known answers: the paired bootstrap, the best-T_eval
pick, the selection/confirmation split, the exact sign-flip test against brute-force enumeration,
its inverted interval, Holm's adjustment and the sizing formula."""

import itertools

import numpy as np
import pytest

from pipeline.evaluation.stats import (
    best_temperature,
    holm,
    paired_bootstrap,
    sign_flip_interval,
    sign_flip_test,
    size,
    split,
    subset,
    within_problem_variance,
)


def test_identical_scores_give_zero_interval():
    scores = [0.0, 0.3, 1.0, 0.5, 0.0, 1.0]
    ci = paired_bootstrap(scores, scores)
    assert (ci.mean_delta, ci.low, ci.high) == (0.0, 0.0, 0.0)
    assert ci.resamples == 10_000 and ci.seed == 0 and ci.problems == 6 and ci.confidence == 0.95


def test_constant_shift_gives_point_interval():
    base = [0.1, 0.2, 0.0, 0.5]
    ci = paired_bootstrap(base, [b + 1 for b in base])
    assert ci.mean_delta == pytest.approx(1) and ci.low == pytest.approx(1) and ci.high == pytest.approx(1)


def test_two_problems_hand_computed():
    """Deltas (0, 1): resample means are 0 (p=1/4), 0.5 (1/2), 1 (1/4), so the 2.5th and
    97.5th percentiles are 0 and 1."""
    ci = paired_bootstrap([0, 0], [0, 1], resamples=4000, seed=3)
    assert ci.mean_delta == 0.5 and ci.low == 0.0 and ci.high == 1.0


def test_matches_numpy_reference():
    """The same draws written out directly: one (resamples x problems) index matrix."""
    rng = np.random.default_rng(11)
    base, adapter = rng.random(40).round(), rng.random(40).round()
    ci = paired_bootstrap(list(base), list(adapter), resamples=800, seed=5)
    draws = np.random.default_rng(5).integers(0, 40, size=(800, 40))
    means = (adapter - base)[draws].mean(axis=1)
    assert (ci.low, ci.high) == tuple(np.quantile(means, [0.025, 0.975]))
    assert ci.mean_delta == pytest.approx((adapter - base).mean())


def test_converges_to_exact_bootstrap_distribution():
    """For 4 problems the bootstrap distribution can be enumerated (4^4 equally likely
    resamples); the sampled percentiles must match the exact ones."""
    delta = np.array([-1.0, 0.0, 0.5, 1.0])
    exact = np.sort([delta[list(idx)].mean() for idx in itertools.product(range(4), repeat=4)])
    ci = paired_bootstrap([0, 0, 0, 0], list(delta), resamples=20_000, seed=1)
    # the exact 2.5% / 97.5% points of the enumerated distribution (a step function)
    assert ci.low == exact[int(0.025 * len(exact))]
    assert ci.high == exact[int(np.ceil(0.975 * len(exact))) - 1]


def test_mappings_are_paired_by_problem_id():
    base = {"a": 0.0, "b": 1.0, "c": 0.5}
    shuffled_adapter = {"c": 0.5, "a": 0.0, "b": 1.0}  # same scores, other order: delta is 0 everywhere
    assert paired_bootstrap(base, shuffled_adapter).high == 0.0
    with pytest.raises(ValueError, match=r"problems not scored for both models: \['c', 'd'\]"):
        paired_bootstrap(base, {"a": 0.0, "b": 1.0, "d": 1.0})
    with pytest.raises(TypeError, match="both as mappings"):
        paired_bootstrap(base, [0.0, 1.0, 0.5])


def test_seed_fixes_the_result():
    rng = np.random.default_rng(0)
    base, adapter = list(rng.random(30)), list(rng.random(30))
    assert paired_bootstrap(base, adapter, seed=7) == paired_bootstrap(base, adapter, seed=7)
    assert paired_bootstrap(base, adapter, seed=7).low != paired_bootstrap(base, adapter, seed=8).low


@pytest.mark.parametrize(
    "base,adapter,kwargs,message",
    [
        ([], [], {}, "no problems"),
        ([0.1], [0.1, 0.2], {}, "same length"),
        ([float("nan")], [0.0], {}, "NaN"),
        ([0.0], [0.0], {"resamples": 0}, "resamples"),
        ([0.0], [0.0], {"confidence": 1.0}, "confidence"),
    ],
)
def test_bad_input_is_an_error(base, adapter, kwargs, message):
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(base, adapter, **kwargs)


def test_best_temperature():
    grid = {1.1: [1, 0, 0, 1], 0.6: [0, 0, 1, 0], 0.9: [1, 1, 0, 1]}
    choice = best_temperature(grid)
    assert choice.temperature == 0.9 and choice.mean == 0.75
    assert choice.means == {0.6: 0.25, 0.9: 0.75, 1.1: 0.5}
    assert best_temperature({1.2: [1, 0], 0.7: [0, 1]}).temperature == 0.7  # tie: the lower temperature
    with pytest.raises(ValueError, match="problems not scored for both"):
        best_temperature({0.7: {"a": 1.0}, 0.9: {"b": 1.0}})
    with pytest.raises(ValueError, match="empty grid"):
        best_temperature({})


# --- the split ---------------------------------------------------------------------------------


def _problems(count: int, levels=("easy", "medium", "hard")) -> list[dict]:
    return [{"task_id": f"LCB/{i}", "difficulty": levels[i % len(levels)] if levels else None} for i in range(count)]


def test_split_is_deterministic_disjoint_and_stratified():
    problems = _problems(90)
    first = split(problems, 0.3, seed=5)
    again = split(list(reversed(problems)), 0.3, seed=5)  # the order of loading does not matter
    assert (set(again.selection), set(again.confirmation)) == (set(first.selection), set(first.confirmation))
    assert split(problems, 0.3, seed=5) == first
    assert set(first.selection).isdisjoint(first.confirmation)
    assert sorted(first.selection + first.confirmation) == sorted(p["task_id"] for p in problems)
    assert len(first.selection) == 27 and first.stratified_by == "difficulty"
    level = {p["task_id"]: p["difficulty"] for p in problems}
    assert [sum(level[t] == d for t in first.selection) for d in ("easy", "medium", "hard")] == [9, 9, 9]
    other = split(problems, 0.3, seed=6)
    assert other.selection != first.selection and len(other.selection) == 27


def test_split_without_difficulty_and_its_limits():
    plain = split(_problems(10, levels=None), 0.3, seed=0)
    assert plain.stratified_by is None and len(plain.selection) == 3 and len(plain.confirmation) == 7
    tiny = split(_problems(2, levels=None), 0.1, seed=0)
    assert len(tiny.selection) == 1 and len(tiny.confirmation) == 1  # at least one problem in each part
    with pytest.raises(ValueError, match="pre-register evaluation.t_eval"):
        split(_problems(1), 0.3)
    with pytest.raises(ValueError, match="fraction"):
        split(_problems(10), 1.0)
    assert subset({"a": 1.0, "b": 0.0}, ["b"]) == {"b": 0.0}
    with pytest.raises(ValueError, match="not scored"):
        subset({"a": 1.0}, ["c"])


# --- the exact paired test -----------------------------------------------------------------------


def _brute_force_p(base, adapter) -> float:
    """P(sum of sign-flipped differences >= observed) over every assignment of all problems' signs."""
    d = np.asarray(adapter, float) - np.asarray(base, float)
    sums = [np.dot(signs, d) for signs in itertools.product((-1, 1), repeat=d.size)]
    return float(np.mean(np.asarray(sums) >= d.sum() - 1e-9))


@pytest.mark.parametrize("seed", range(8))
def test_sign_flip_p_value_equals_brute_force_enumeration(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(3, 11))
    base = rng.integers(0, 5, size) / 4  # pass shares of 4 samples, ties included
    adapter = rng.integers(0, 5, size) / 4
    test = sign_flip_test(list(base), list(adapter))
    assert test.exact and test.p_value == pytest.approx(_brute_force_p(base, adapter), abs=1e-12)
    assert test.discordant == int((base != adapter).sum())


def test_sign_flip_few_discordant_problems_are_not_significant():
    """The issue's case: 4 problems differ, all for the adapter: p = 1/16, whatever the problem count."""
    base, adapter = [0.0] * 164, [0.0] * 160 + [1.0] * 4
    test = sign_flip_test(base, adapter)
    assert test.p_value == 1 / 16 and test.exact and test.discordant == 4
    assert sign_flip_test(base, [0.0] * 159 + [1.0] * 5).p_value == 1 / 32
    assert sign_flip_test(base, base).p_value == 1.0
    # the percentile bootstrap's lower bound clears 0 here; the test's inverted interval does not
    assert paired_bootstrap(base, adapter).low > 0
    assert sign_flip_interval(base, adapter).low <= 0


def test_sign_flip_drawn_p_value_is_close_to_the_exact_one():
    """18 problems differ (above EXACT_MAX): drawn assignments, checked against all 2^18 enumerated."""
    rng = np.random.default_rng(3)
    d = rng.choice([-1.0, -0.5, 0.5, 1.0], size=18, p=[0.2, 0.2, 0.3, 0.3])
    signs = ((np.arange(2**18)[:, None] >> np.arange(18)) & 1) * 2.0 - 1.0
    exact = float(np.mean(signs @ d >= d.sum() - 1e-9))
    drawn = sign_flip_test([0.0] * 30, list(np.r_[d, np.zeros(12)]), resamples=20_000, seed=1)
    assert not drawn.exact and drawn.discordant == 18 and drawn.resamples == 20_000
    # Monte-Carlo error of a share near 0.1 from 20,000 draws: about 0.002
    assert drawn.p_value == pytest.approx(exact, abs=0.01) and drawn.p_value >= 1 / 20_001
    assert sign_flip_test([0.0] * 30, list(np.r_[d, np.zeros(12)]), resamples=20_000, seed=1) == drawn


def test_sign_flip_interval_inverts_the_test():
    """Lower bound above 0 exactly when the one-sided test rejects at 2.5% (exact enumeration)."""
    rng = np.random.default_rng(0)
    for _ in range(40):
        size = int(rng.integers(6, 13))
        base, adapter = rng.integers(0, 2, size).astype(float), (rng.random(size) < 0.7).astype(float)
        ci = sign_flip_interval(list(base), list(adapter))
        p = _brute_force_p(base, adapter)
        assert (ci.low > 0) == (p <= 0.025), (base, adapter, ci, p)
        assert ci.low <= ci.mean_delta <= ci.high and ci.resamples == 0  # enumerated


def test_holm_matches_its_definition():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.5})
    # sorted: a 0.01 x4 = 0.04; c 0.03 x3 = 0.09; b 0.04 x2 = 0.08 -> running max 0.09; d 0.5 x1
    assert adjusted == pytest.approx({"a": 0.04, "b": 0.09, "c": 0.09, "d": 0.5})
    assert holm({"only": 0.03}) == {"only": 0.03}
    assert holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


def test_sizing_formula_and_the_guard_margin():
    s = size(164, 4, 0.03)
    plain = (1.959964 + 0.841621) * np.sqrt(2 * 0.03 * 0.97 / 4) / np.sqrt(164)  # the effect-free approximation
    assert s.sd == pytest.approx(np.sqrt(2 * 0.03 * 0.97 / 4)) and plain < s.detectable < 1.3 * plain
    # the detectable change solves its own equation (the test's and the changed arm's spread at that change)
    v, d = 0.03 * 0.97, s.detectable
    spread = (v + v + d * (1 - 2 * 0.03) - d**2) / 4
    assert d == pytest.approx(1.959964 * np.sqrt((spread + d**2) / 164) + 0.841621 * np.sqrt(spread / 164), rel=1e-5)
    assert size(164, 4, 0.03, variance=0.01).detectable < s.detectable  # heterogeneous problems: more power
    guard = size(100, 1, 0.35, margin=0.02)
    assert not guard.reaches_margin and guard.harmless_pass < 0.1  # the MBPP guard: noise
    big = size(5000, 10, 0.35, margin=0.02)
    assert big.reaches_margin and big.harmless_pass > 0.8
    assert within_problem_variance([0.0, 1.0, 0.5], 4) == pytest.approx((0 + 0 + 4 / 12) / 3)
    assert within_problem_variance([0.0, 1.0], 1) == 0.25
