"""How sure is a pass@1 difference, what was chosen on which problems, and what a comparison can detect.

The protocol (README, "Statistics"), in the order the eval stage applies it:

- ``split``: whatever is chosen on data (each model's T_eval, a sweep's best point) is chosen on a
  *selection* part of the problems and judged on the disjoint *confirmation* part. Picking the best
  of several noisy cells and then testing on the same problems inflates the delta (the winner's
  curse: about one standard error for the best of 3 to 9 cells); a held-out part removes that bias
  exactly. The split is a pure function of the problem ids, the fraction and the seed (stratified by
  difficulty where problems have one), so base and adapter, and every run, see the same parts.
- ``best_temperature``: each model at its own best T_eval (the paper tuned the base's decoding too),
  picked from per-problem scores of the selection part only.
- ``sign_flip_test``: the exact paired test. Under "the adapter is no better", each problem's
  ``adapter - base`` difference is as likely to have either sign, so the one-sided p-value is the
  share of the 2^m sign assignments of the m problems that differ whose sum reaches the observed
  one: enumerated exactly when m is small, drawn (fixed seed, +1 correction, so never below the
  exact value in expectation) when it is not. 4 discordant problems all favouring the adapter give
  p = 1/16 = 0.0625, not "significant".
- ``sign_flip_interval``: the 95% interval the gate reads is the inversion of that test (every shift
  theta the test at level 2.5% per side does not reject for ``delta - theta``), so its lower bound is
  above 0 exactly when the one-sided test rejects at 2.5%. The percentile bootstrap
  (``paired_bootstrap``, still recorded beside it) is anti-conservative when few problems differ: with
  4 discordant problems all favouring the adapter its lower bound clears 0, which chance alone does
  6.25% of the time (nominal 2.5%). Test inversion was chosen over BCa or a studentized bootstrap
  because both of those degenerate in exactly that case (all resampled differences of one sign, a
  zero standard error) while inversion inherits the test's exact level at theta = 0.
- ``holm``: several sweep points competing for promotion are corrected for (Holm's step-down: it
  controls the chance of promoting any null point at alpha, and is never weaker than Bonferroni).
- ``detectable_effect`` / ``size``: what a comparison of this size can see: the smallest gain
  detected with 80% power, and for a guard, whether its non-inferiority margin is within reach.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from pipeline.artifacts import Sizing

Scores = Mapping[str, float] | Sequence[float]
_CHUNK = 1000  # resamples drawn per batch; fixed, so the draws for a seed never change
EXACT_MAX = 16  # up to this many differing problems the sign-flip test enumerates all 2^m assignments
_TOL = 1e-9  # scores are shares of n samples: sums that are equal in exact arithmetic compare as equal


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

    Give it the selection part's scores only (``subset``): the chosen cell's mean on the problems
    it was chosen on is biased upwards, so the verdict must come from other problems. Every
    temperature must be scored on the same problems (mappings: the same ids; sequences: the same
    length), or the means are not comparable.
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


# --- the split: selection and confirmation parts ---------------------------------------------


@dataclass(frozen=True)
class Split:
    """Disjoint problem ids: ``selection`` (choices are made here) and ``confirmation`` (judged here)."""

    selection: list[str]
    confirmation: list[str]
    fraction: float
    seed: int
    stratified_by: str | None


def _rank(seed: int, task_id: str) -> str:
    """A problem's place in the shuffled order: a hash of the seed and its id, so a problem's part
    does not depend on which other problems are loaded, on their order, or on the platform."""
    return hashlib.sha256(f"{seed}:{task_id}".encode()).hexdigest()


def split(problems: Iterable[Mapping], fraction: float, seed: int = 0) -> Split:
    """Put round(fraction x size) of each stratum into the selection part, the rest into the
    confirmation part; at least one each. Strata: the difficulties, where any problem has one, within
    each benchmark, where the problems come from several (a pooled benchmark); else all problems.

    ``problems``: mappings with ``task_id`` and optionally ``difficulty`` and ``benchmark``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"split: fraction must be in (0, 1), got {fraction}")
    problems = list(problems)
    if len(problems) < 2:
        raise ValueError(
            f"split: {len(problems)} problem(s) cannot be split into a selection and a confirmation part; evaluate "
            "more problems, use one T_eval, or pre-register evaluation.t_eval"
        )
    ids = [str(p["task_id"]) for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError("split: problem ids repeat")
    stratified = any(p.get("difficulty") for p in problems)
    pooled = len({p.get("benchmark") for p in problems}) > 1  # humaneval+mbpp: each benchmark its own strata
    strata: dict[str, list[str]] = {}
    for p in problems:
        name = (str(p.get("benchmark")) if pooled else "", str(p.get("difficulty") or "") if stratified else "")
        strata.setdefault("/".join(name), []).append(str(p["task_id"]))
    selection, confirmation = [], []
    for name in sorted(strata):
        ordered = sorted(strata[name], key=lambda task: _rank(seed, task))
        cut = round(fraction * len(ordered))
        selection += ordered[:cut]
        confirmation += ordered[cut:]
    if not selection:
        selection.append(confirmation.pop(0))
    if not confirmation:
        confirmation.append(selection.pop())
    order = {task: i for i, task in enumerate(ids)}  # back in benchmark order, for readable files
    return Split(
        sorted(selection, key=order.__getitem__),
        sorted(confirmation, key=order.__getitem__),
        fraction,
        seed,
        "+".join(("benchmark",) * pooled + ("difficulty",) * stratified) or None,
    )


def subset(scores: Mapping[str, float], ids: Iterable[str]) -> dict[str, float]:
    """``scores`` restricted to ``ids`` (every id must be scored)."""
    ids = list(ids)
    if missing := [task for task in ids if task not in scores]:
        raise ValueError(f"subset: problems not scored: {missing[:10]}")
    return {task: scores[task] for task in ids}


# --- the exact paired test and its interval --------------------------------------------------


@dataclass(frozen=True)
class SignFlipTest:
    """One-sided test of "the adapter is no better": ``p_value`` = P(sum of sign-flipped differences
    >= the observed sum). ``exact``: all 2^discordant assignments enumerated (else ``resamples`` drawn)."""

    p_value: float
    observed: float
    discordant: int
    exact: bool
    resamples: int
    seed: int


@functools.lru_cache(maxsize=8)
def _signs(m: int, resamples: int, seed: int) -> np.ndarray:
    """The sign vectors for m items: all 2^m when m <= EXACT_MAX, else ``resamples`` drawn with
    ``seed`` (the same matrix for the same arguments, so it is kept: a grid asks for it repeatedly).
    Read-only int8, rows are assignments."""
    if m <= EXACT_MAX:
        signs = ((np.arange(2**m)[:, None] >> np.arange(m)) & 1) * 2 - 1
    else:
        signs = np.random.default_rng(seed).integers(0, 2, size=(resamples, m)) * 2 - 1
    signs = signs.astype(np.int8)
    signs.flags.writeable = False
    return signs


def _flipped_sums(values: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(sum of s_i x values_i, sum of s_i) for every sign vector s: all of them when few, else drawn."""
    signs = _signs(values.size, resamples, seed)
    sums, totals = np.empty(signs.shape[0]), np.empty(signs.shape[0])
    for start in range(0, signs.shape[0], _CHUNK * 16):  # chunks bound the float copy of the signs
        block = signs[start : start + _CHUNK * 16].astype(float)
        sums[start : start + block.shape[0]], totals[start : start + block.shape[0]] = block @ values, block.sum(axis=1)
    return sums, totals, values.size <= EXACT_MAX


def sign_flip_test(base: Scores, adapter: Scores, *, resamples: int = 20_000, seed: int = 0) -> SignFlipTest:
    """Exact paired sign-flip (permutation) test over problems, one-sided (adapter better).

    Only problems whose scores differ carry information (a tie flips to itself). With at most
    ``EXACT_MAX`` of them every assignment is enumerated; otherwise ``resamples`` are drawn with a
    fixed seed and p = (1 + hits) / (1 + resamples), a valid p-value (Phipson and Smyth, 2010).
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    a, b = _aligned(base, adapter)
    d = b - a
    d = d[np.abs(d) > _TOL]
    observed = float(d.sum())
    if d.size == 0:
        return SignFlipTest(1.0, 0.0, 0, True, 0, seed)
    sums, _, exact = _flipped_sums(d, resamples, seed)
    hits = int((sums >= observed - _TOL).sum())
    p = hits / sums.size if exact else (hits + 1) / (resamples + 1)
    return SignFlipTest(min(p, 1.0), observed, int(d.size), exact, 0 if exact else resamples, seed)


def _lower_bound(d: np.ndarray, sums: np.ndarray, totals: np.ndarray, exact: bool, tail: float) -> float:
    """Smallest theta the one-sided test of "delta <= theta" does not reject at ``tail``.

    For a shift theta the flipped statistic exceeds the observed one iff A + theta x C >= 0, with
    A = sum(s d) - sum(d) and C = n - sum(s) >= 0: each sign vector counts from its own threshold
    -A/C upwards, so the p-value is a step function of theta and its crossing is a sorted threshold.
    """
    n, extra = d.size, 0 if exact else 1
    a = sums - d.sum()
    c = n - totals
    always = int(((c <= _TOL) & (a >= -_TOL)).sum())  # the identity (and ties): counts at every theta
    thresholds = np.sort(-a[c > _TOL] / c[c > _TOL])
    need = int(np.floor(tail * (sums.size + extra))) - always - extra + 1  # thresholds theta must pass
    if need <= 0:
        return -1.0
    if need > thresholds.size:
        return 1.0
    return float(np.clip(thresholds[need - 1], -1.0, 1.0)) + 0.0  # + 0.0: no -0.0 in the files


def sign_flip_interval(
    base: Scores, adapter: Scores, *, confidence: float = 0.95, resamples: int = 20_000, seed: int = 0
) -> BootstrapCI:
    """The interval of mean(adapter - base) that inverts the sign-flip test, ``(1 - confidence)/2``
    per side: its lower bound is above 0 exactly when the one-sided test rejects at that level.

    Every problem is flipped (after a shift none is a tie): all 2^n assignments for up to
    ``EXACT_MAX`` problems, otherwise ``resamples`` drawn with ``seed``. The shift model (differences
    symmetric about theta) is exact at theta = 0, which is the point the gate reads; elsewhere it is
    the usual approximation of a permutation interval. Returned as ``BootstrapCI`` for one shape of
    interval throughout; ``resamples`` is 0 when the enumeration was exact.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a, b = _aligned(base, adapter)
    d = b - a
    tail = (1 - confidence) / 2
    sums, totals, exact = _flipped_sums(d, resamples, seed)
    low = _lower_bound(d, sums, totals, exact, tail)
    high = 0.0 - _lower_bound(-d, -sums, totals, exact, tail)
    return BootstrapCI(float(d.mean()), low, high, confidence, 0 if exact else resamples, seed, int(d.size))


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values: reject a candidate when its adjusted p <= alpha, and the
    chance of rejecting any true null among them stays <= alpha, whatever their dependence."""
    order = sorted(p_values, key=lambda name: (p_values[name], name))
    m, running, adjusted = len(order), 0.0, {}
    for i, name in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[name]))
        adjusted[name] = running
    return {name: adjusted[name] for name in p_values}


# --- what a comparison can detect ------------------------------------------------------------


def within_problem_variance(scores: Iterable[float], n: int) -> float:
    """Mean over problems of p_i (1 - p_i), the binomial variance of one sample, from per-problem
    pass shares of ``n`` samples: unbiased c (n - c) / (n (n - 1)) when n > 1; with one sample the
    problems' spread cannot be told from sampling noise, so the upper bound p (1 - p) is used."""
    shares = np.asarray(list(scores), dtype=float)
    if shares.size == 0:
        raise ValueError("within_problem_variance: no problems")
    if n > 1:
        c = np.round(shares * n)
        return float((c * (n - c) / (n * (n - 1))).mean())
    p = float(shares.mean())
    return p * (1 - p)


def size(
    problems: int,
    n: int,
    pass_rate: float,
    *,
    variance: float | None = None,
    level: float = 0.025,
    power: float = 0.8,
    margin: float | None = None,
) -> Sizing:
    """Normal-approximation sizing of a paired pass@1 comparison.

    Under no effect, base and adapter draw their n samples of a problem from the same per-problem
    rate, so a problem's difference has variance 2 v / n, with v the mean of p_i (1 - p_i)
    (``variance``; without it p (1 - p), the homogeneous upper bound), and the mean over
    ``problems`` has standard error sd / sqrt(problems). The smallest change ``delta`` found with
    ``power`` at one-sided ``level`` solves delta = z_level x se_test + z_power x se_delta: the
    sign-flip statistic's spread grows with the effect (its variance is the mean of d^2, not of
    (d - delta)^2) and so does the changed arm's binomial variance; without both, the plain
    (z_level + z_power) x se overstates the power by about 10 points at 80% on 80 problems. A
    guard's change is a regression (its rate moves down). Shared seeds make the two arms'
    samples positively correlated, which only shrinks the real error: these figures are
    conservative.
    """
    if problems < 1 or n < 1:
        raise ValueError(f"size: need problems >= 1 and n >= 1, got {problems} and {n}")
    if not 0 <= pass_rate <= 1:
        raise ValueError(f"size: pass_rate must be in [0, 1], got {pass_rate}")
    v = pass_rate * (1 - pass_rate) if variance is None else variance
    sd = float(np.sqrt(2 * v / n))
    se = sd / np.sqrt(problems)
    z = NormalDist()
    z_level, z_power = z.inv_cdf(1 - level), z.inv_cdf(power)
    direction = -1.0 if margin is not None else 1.0
    detectable = float((z_level + z_power) * se)
    for _ in range(50):  # a contraction: converges in a few steps
        moved = max(v + direction * detectable * (1 - 2 * pass_rate) - detectable**2, 0.0)
        spread = (v + moved) / n
        step = z_level * np.sqrt((spread + detectable**2) / problems) + z_power * np.sqrt(spread / problems)
        if abs(step - detectable) < 1e-12:
            break
        detectable = float(step)
    sizing = Sizing(problems=problems, n=n, pass_rate=pass_rate, sd=sd, level=level, power=power, detectable=detectable)
    if margin is None:
        return sizing
    harmless = 1.0 if se == 0 else z.cdf(margin / se - z_level)
    return sizing.model_copy(
        update={"margin": margin, "harmless_pass": float(harmless), "reaches_margin": bool(detectable <= margin)}
    )
