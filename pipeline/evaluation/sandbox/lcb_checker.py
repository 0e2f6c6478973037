"""The LiveCodeBench checker: runs INSIDE the sandbox, as the program ``sandbox.execute`` runs.

``benchmarks.check_program`` builds a program from this file's source plus one call,
``main(<spec as JSON>)``, where the spec holds the candidate solution, its test cases and the
per-test time limit. Only the standard library is used: it runs under the sandbox interpreter.
The program ends normally only if every test passes; the first failing test raises
``AssertionError`` with what went wrong, which becomes the verdict's detail.

The candidate runs in a child process of this checker, never in the checker itself:

- **stdin problems**: one fresh interpreter per test case, with the case's input on a real
  stdin pipe and stdout captured. ``sys.stdin.buffer``, ``open(0)``, ``os.read(0, ...)``,
  threads and ``sys.exit()`` behave as on a judge, with no mocking (LiveCodeBench has to patch
  ``builtins.open`` and ``sys.stdin`` for that), and no state leaks from one case to the next.
  The cost is an interpreter start per case (about 20 ms here).
- **functional problems** (LeetCode ``class Solution``): one child runs all cases in order
  (as LiveCodeBench does in one process), with a per-case alarm, and reports each return value
  as ``repr`` on a private pipe; the candidate's own prints go to stderr.

Either way the candidate never sees the expected outputs and cannot touch the comparison,
which happens here, in the checker.

Comparison follows LiveCodeBench (``lcb_runner/evaluation/testing_util.py``, since its Jan 2025
grader): stdin outputs are compared line by line after stripping the whole output and each
line; lines that differ must both parse as whitespace-separated ``Decimal`` numbers and be
equal as numbers ("1.50" equals "1.5"; there is no tolerance: "0.333333" does not equal
"0.3333333"). Functional results must equal the JSON-decoded expected value with ``==``, after a
top-level tuple is turned into a list. Every test, public ones first, must pass.

Deliberate differences from LiveCodeBench's harness, all in how the program runs, not in how it
is graded. The stdin program runs as a real script with real stdin and stdout; LiveCodeBench
wraps it in a function (a top-level name used through ``global`` then raises ``NameError``),
mocks stdin and captures stdout in a ``StringIO``, so ``sys.stdout.buffer``, ``os.read(0, ...)``
and ``open(0)`` (its imports shadow ``open`` with ``io.open``, which the mock misses) fail there
and work here. A functional result must be plain data (lists, tuples, dicts, sets, str, int,
float, bool, None, or their subclasses): an object with a custom ``__eq__`` fails instead of
being trusted. Checked on 2026-11-23 against LiveCodeBench's own ``run_test`` on the solutions
in tests/unit/test_lcb.py: 34 of 39 verdicts agreed, and the 5 others were exactly these cases.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from decimal import Decimal, InvalidOperation

# LiveCodeBench's ``import_string``: every solution runs with these names in scope.
LCB_IMPORTS = """\
from string import *
from re import *
from datetime import *
from collections import *
from heapq import *
from bisect import *
from copy import *
from math import *
from random import *
from statistics import *
from itertools import *
from functools import *
from operator import *
from io import *
from sys import *
from json import *
from builtins import *
from typing import *
import string
import re
import datetime
import collections
import heapq
import bisect
import copy
import math
import random
import statistics
import itertools
import functools
import operator
import io
import sys
import json
sys.setrecursionlimit(50000)
"""
INT_DIGITS = 50000  # LiveCodeBench's grader raises Python's int <-> str digit limit to this

# The candidate's process for a stdin problem: LiveCodeBench's imports, then the solution as
# ``__main__``. A ``sys.exit()`` in the solution ends it, and its output so far is graded, as
# LiveCodeBench does.
STDIN_RUNNER = """\
import sys
if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(%(digits)d)
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
exec(%(imports)r, namespace)
with open("solution.py", encoding="utf-8") as fh:
    source = fh.read()
try:
    exec(compile(source, "solution.py", "exec"), namespace)
except SystemExit:
    pass
""" % {"digits": INT_DIGITS, "imports": LCB_IMPORTS}  # noqa: UP031 (a program's text: %-format keeps its braces)

# The candidate's process for a functional problem: reads the argument lists as JSON on stdin,
# writes one JSON line per case to a private copy of stdout: ["ok", repr(result)], ["error",
# message] or ["timeout"]; stops at the first error or timeout (the checker stops there too).
FUNCTIONAL_DRIVER = """\
import json, os, signal, sys
if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(%(digits)d)
report = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(2, 1)
func_name, timeout_s = sys.argv[1], float(sys.argv[2])
cases = json.loads(sys.stdin.read())


class CaseTimeout(BaseException):
    pass


def on_alarm(signum, frame):
    raise CaseTimeout()


def plain(value):
    if value is None or type(value) in (bool, int, float, str):
        return value
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    for kind in (list, tuple, set, frozenset):
        if isinstance(value, kind):
            return kind(plain(v) for v in value)
    raise TypeError(f"returned a {type(value).__name__}, not plain data")


def send(message):
    report.write(json.dumps(message) + "\\n")
    report.flush()


try:
    namespace = {"__name__": "tmp_sol"}
    exec(%(imports)r, namespace)
    with open("solution.py", encoding="utf-8") as fh:
        source = fh.read()
    exec(compile(source, "solution.py", "exec"), namespace)
    owner = namespace["Solution"]() if "class Solution" in source else None
    method = getattr(owner, func_name) if owner is not None else namespace[func_name]
except BaseException as exc:
    send(["error", f"{type(exc).__name__}: {exc}"])
    sys.exit(0)
signal.signal(signal.SIGALRM, on_alarm)
for args in cases:
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            result = method(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if isinstance(result, tuple):
            result = list(result)
        text = repr(plain(result))
    except CaseTimeout:
        send(["timeout"])
        break
    except BaseException as exc:
        send(["error", f"{type(exc).__name__}: {exc}"])
        break
    send(["ok", text])
""" % {"digits": INT_DIGITS, "imports": LCB_IMPORTS}  # noqa: UP031 (a program's text: %-format keeps its braces)


def _short(value: object, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit // 2] + " ... " + text[-limit // 2 :]


def stripped_lines(text: str) -> list[str]:
    """LiveCodeBench's ``get_stripped_lines``: strip the whole text, then each line."""
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except (InvalidOperation, ValueError):
        return None


def stdout_mismatch(got: str, expected: str) -> str | None:
    """None if ``got`` matches ``expected`` under LiveCodeBench's rules, else why not."""
    got_lines, expected_lines = stripped_lines(got), stripped_lines(expected)
    if len(got_lines) != len(expected_lines):
        return f"{len(got_lines)} output lines, expected {len(expected_lines)}"
    for number, (a, b) in enumerate(zip(got_lines, expected_lines, strict=True), 1):
        if a == b:
            continue
        da, db = _decimals(a), _decimals(b)
        if da is None or db is None or da != db:
            return f"line {number}: got {_short(a)!r}, expected {_short(b)!r}"
    return None


def _error_tail(stderr: bytes) -> str:
    text = stderr.decode(errors="replace").strip()
    return _short(text.splitlines()[-1] if text else "no message", 300)


def run_stdin(solution: str, tests: list[dict], timeout_s: float) -> None:
    """Run the candidate once per case; raise AssertionError at the first failing case."""
    with open("solution.py", "w", encoding="utf-8") as fh:
        fh.write(solution)
    with open("runner.py", "w", encoding="utf-8") as fh:
        fh.write(STDIN_RUNNER)
    for number, test in enumerate(tests, 1):
        where = f"test {number}/{len(tests)} ({'public' if test['public'] else 'private'})"
        try:
            done = subprocess.run(
                [sys.executable, "-I", "runner.py"],
                input=test["input"].encode(),
                capture_output=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{where}: time limit exceeded ({timeout_s}s)") from None
        if done.returncode != 0:
            raise AssertionError(f"{where}: runtime error (exit {done.returncode}): {_error_tail(done.stderr)}")
        why = stdout_mismatch(done.stdout.decode(errors="replace"), test["output"])
        if why:
            raise AssertionError(f"{where}: wrong answer: {why}")


def run_functional(solution: str, func_name: str, tests: list[dict], timeout_s: float) -> None:
    """Run all cases in one candidate process; raise AssertionError at the first failing case."""
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(INT_DIGITS)
    with open("solution.py", "w", encoding="utf-8") as fh:
        fh.write(solution)
    with open("driver.py", "w", encoding="utf-8") as fh:
        fh.write(FUNCTIONAL_DRIVER)
    cases = [[json.loads(line) for line in test["input"].split("\n")] for test in tests]
    try:
        done = subprocess.run(
            [sys.executable, "-I", "driver.py", func_name, str(timeout_s)],
            input=json.dumps(cases).encode(),
            capture_output=True,
            timeout=(timeout_s + 1) * len(tests),  # a backstop: each case has its own alarm
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"time limit exceeded (all {len(tests)} tests: {(timeout_s + 1) * len(tests)}s)") from None
    reports = [json.loads(line) for line in done.stdout.decode(errors="replace").splitlines() if line.strip()]
    for number, test in enumerate(tests, 1):
        where = f"test {number}/{len(tests)} ({'public' if test['public'] else 'private'})"
        if number > len(reports):
            raise AssertionError(f"{where}: no result (exit {done.returncode}): {_error_tail(done.stderr)}")
        report = reports[number - 1]
        if report[0] == "timeout":
            raise AssertionError(f"{where}: time limit exceeded ({timeout_s}s)")
        if report[0] == "error":
            raise AssertionError(f"{where}: runtime error: {_short(report[1], 300)}")
        try:
            got = ast.literal_eval(report[1])
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise AssertionError(
                f"{where}: wrong answer: result {_short(report[1])} is not a comparable value"
            ) from None
        expected = json.loads(test["output"])
        if got != expected:
            raise AssertionError(f"{where}: wrong answer: got {_short(report[1])}, expected {_short(test['output'])}")


def main(spec_json: str) -> None:
    """Check one solution: ``{"kind", "func_name", "solution", "tests", "timeout"}``."""
    spec = json.loads(spec_json)
    if spec["kind"] == "stdin":
        run_stdin(spec["solution"], spec["tests"], spec["timeout"])
    else:
        run_functional(spec["solution"], spec["func_name"], spec["tests"], spec["timeout"])
