"""``ssd power``: what a comparison can detect before it is run (README, "Statistics").

    ssd power --problems 164 --n 4 --pass-rate 0.03 [--variance 0.006] [--selection-fraction 0.3] [--alpha 0.05]
              [--guard 100:1:0.35 ...] [--max-regression 0.02]

For the target: the smallest pass@1 gain the gate finds with 80% power on the confirmation part
(the problems left after the selection part is split off). For each guard (``PROBLEMS:N:PASS_RATE``):
the smallest regression it detects with 80% power, the probability that a harmless adapter passes
its non-inferiority rule, and a warning when its margin (``max_regression``) is below what it can
resolve. The eval stage records the same figures in ``metrics.json`` from observed pass rates.
"""

from __future__ import annotations

import argparse

from pipeline.cli import EXIT_OK, UsageError

CONFIDENCE_TAIL = 0.025  # the gate's 95% interval, per side


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("power", help="smallest detectable gain of the target, what a guard can miss")
    p.add_argument("--problems", type=int, required=True, help="target benchmark problems evaluated")
    p.add_argument("--n", type=int, default=1, help="samples per problem (evaluation.n)")
    p.add_argument("--pass-rate", type=float, required=True, help="the base model's expected pass@1 on the target")
    p.add_argument(
        "--selection-fraction",
        type=float,
        default=0.0,
        help="share split off to choose T_eval (evaluation.selection_fraction; 0: a single or pre-registered T_eval)",
    )
    p.add_argument(
        "--variance",
        type=float,
        help="one sample's binomial variance averaged over problems, mean p_i (1 - p_i), e.g. from an earlier run: "
        "its metrics.json sizing.sd^2 x n / 2 (default: p (1 - p), the upper bound when every problem has the same "
        "rate; problems that never or always pass make it smaller)",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="promotion.alpha (one-sided test)")
    p.add_argument("--power", type=float, default=0.8, help="probability of detecting the effect")
    p.add_argument(
        "--guard",
        action="append",
        default=[],
        metavar="PROBLEMS:N:PASS_RATE",
        help="a guard benchmark, e.g. 100:1:0.35",
    )
    p.add_argument("--max-regression", type=float, default=0.02, help="promotion.max_regression (the guards' margin)")
    p.set_defaults(func=command)


def _confirmation(problems: int, fraction: float) -> int:
    if not 0 <= fraction < 1:
        raise UsageError(f"--selection-fraction must be in [0, 1), got {fraction}")
    return problems - round(fraction * problems) if fraction else problems


def _variance(args: argparse.Namespace) -> float | None:
    if args.variance is None:
        return None
    bound = args.pass_rate * (1 - args.pass_rate)
    if not 0 <= args.variance <= bound + 1e-12:
        raise UsageError(
            f"--variance {args.variance:g}: must be in [0, p (1 - p) = {bound:.4g}] for --pass-rate {args.pass_rate:g}"
        )
    return args.variance


def command(args: argparse.Namespace) -> int:
    from pipeline.evaluation import stats

    try:
        target = stats.size(
            _confirmation(args.problems, args.selection_fraction),
            args.n,
            args.pass_rate,
            variance=_variance(args),
            level=min(args.alpha, CONFIDENCE_TAIL),
            power=args.power,
        )
        guards = []
        for spec in args.guard:
            parts = spec.split(":")
            if len(parts) != 3:
                raise UsageError(f"--guard {spec!r}: expected PROBLEMS:N:PASS_RATE, e.g. 100:1:0.35")
            problems, n, rate = int(parts[0]), int(parts[1]), float(parts[2])
            guards.append(
                stats.size(
                    _confirmation(problems, args.selection_fraction),
                    n,
                    rate,
                    level=CONFIDENCE_TAIL,
                    power=args.power,
                    margin=args.max_regression,
                )
            )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    variance = "" if args.variance is None else f", per-sample variance {args.variance:g}"
    print(
        f"target: {target.problems} confirmation problems x {target.n} samples, base pass@1 {target.pass_rate:.4f}"
        f"{variance}"
    )
    print(
        f"  smallest gain detected with {target.power:.0%} power at one-sided level {target.level:g}: "
        f"{target.detectable:.4f} ({target.detectable * 100:.2f} pp)"
    )
    for i, guard in enumerate(guards, 1):
        print(f"guard {i}: {guard.problems} problems x {guard.n} samples, base pass@1 {guard.pass_rate:.4f}")
        print(
            f"  smallest regression detected with {guard.power:.0%} power: {guard.detectable:.4f}; a harmless adapter "
            f"passes its non-inferiority rule (margin {guard.margin:g}) with probability {guard.harmless_pass:.2f}"
        )
        if not guard.reaches_margin:
            print(
                f"  WARNING: this guard cannot detect its own threshold (max_regression {guard.margin:g} < "
                f"{guard.detectable:.4f}): evaluate more guard problems or samples, or widen the margin"
            )
    return EXIT_OK
