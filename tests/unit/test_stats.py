"""Paired bootstrap interval and the best-T_eval pick, on cases with known answers."""

import itertools

import numpy as np
import pytest

from pipeline.evaluation.stats import best_temperature, paired_bootstrap


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
