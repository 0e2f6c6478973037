"""How sure is a pass@1 difference, and which evaluation temperature to compare at.

``paired_bootstrap``: the base model and the adapter answer the same problems, so the
comparison is paired: resample problems (with replacement) and recompute the mean of the
per-problem differences ``adapter - base``. The 95% interval is the 2.5th..97.5th percentile of
those means. Pairing removes the between-problem variance that an unpaired comparison of two
pass@1 numbers would carry, which on 164 problems is most of it. The seed is fixed, so the same
scores give the same interval; the number of resamples is returned with it.

``best_temperature``: the paper's finding is that the base model must be compared at its own
best T_eval, not at the adapter's; pick each model's best from a grid of per-problem scores.
Choosing the best of a grid on the same problems favours whichever model has more noise to
exploit, equally for both; report the grid with the choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Scores = Mapping[str, float] | Sequence[float]
_CHUNK = 1000  # resamples drawn per batch; fixed, so the draws for a seed never change


@dataclass(frozen=True)
class BootstrapCI:
    """Mean paired difference and its percentile interval."""

    mean_delta: float
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int
    problems: int


@dataclass(frozen=True)
class TemperatureChoice:
    """The temperature with the highest mean score, and every temperature's mean."""

    temperature: float
    mean: float
    means: dict[float, float]


def _aligned(base: Scores, adapter: Scores) -> tuple[np.ndarray, np.ndarray]:
    """Two score arrays in the same problem order; mappings are matched by problem id."""
    if isinstance(base, Mapping) != isinstance(adapter, Mapping):
        raise TypeError("paired scores: give both as mappings {problem_id: score} or both as sequences")
    if isinstance(base, Mapping):
        if missing := sorted(set(base) ^ set(adapter)):
            raise ValueError(f"paired scores: problems not scored for both models: {missing[:10]}")
        ids = sorted(base)
        base, adapter = [base[i] for i in ids], [adapter[i] for i in ids]
    a, b = np.asarray(base, dtype=float), np.asarray(adapter, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired scores: need two flat lists of the same length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("paired scores: no problems")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores: NaN or infinite score")
    return a, b


def paired_bootstrap(
    base: Scores,
    adapter: Scores,
    *,
    resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> BootstrapCI:
    """Percentile bootstrap interval of mean(adapter - base) over problems.

    ``base``/``adapter``: per-problem scores (e.g. pass@1), as mappings by problem id (safest:
    the pairing is checked) or as sequences in the same problem order. The result depends only
    on the scores, ``resamples``, ``seed`` and ``confidence``.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a, b = _aligned(base, adapter)
    delta = b - a
    n = delta.size
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):  # chunks bound memory (_CHUNK x problems indices)
        stop = min(start + _CHUNK, resamples)
        means[start:stop] = delta[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return BootstrapCI(float(delta.mean()), float(low), float(high), confidence, resamples, seed, n)


def best_temperature(grid: Mapping[float, Scores]) -> TemperatureChoice:
    """The temperature whose per-problem scores have the highest mean (ties: the lowest one).

    Every temperature must be scored on the same problems (mappings: the same ids; sequences:
    the same length), or the means are not comparable.
    """
    if not grid:
        raise ValueError("best_temperature: empty grid")
    temperatures = sorted(grid)
    reference = grid[temperatures[0]]
    means = {}
    for t in temperatures:
        _, scores = _aligned(reference, grid[t])
        means[float(t)] = float(scores.mean())
    best = max(means, key=lambda t: (means[t], -t))
    return TemperatureChoice(best, means[best], means)
