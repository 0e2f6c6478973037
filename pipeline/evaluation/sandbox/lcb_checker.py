"""LiveCodeBench's checker: a box half that runs the candidate and a judge half that grades it.

The box half runs INSIDE the sandbox: ``benchmarks.program`` builds a program from this file's
source plus one call, ``main(<spec as JSON>)``, where the spec holds the candidate solution,
the INPUTS of its test cases and the per-test time limit, never an expected output. It writes
one JSON line per test case to stdout (what the candidate printed, or the value it returned),
and stops at the first case that errs or runs out of time. The judge half, ``grade``, runs in
the trusted pipeline process on that report: the comparison happens where the candidate cannot
reach it, and the expected outputs are in no file or memory the candidate can read.

The candidate runs in a child process of the box half, never in the box half itself:

- **stdin problems**: one fresh interpreter per test case, with the case's input on a real
  stdin pipe and stdout captured. ``sys.stdin.buffer``, ``open(0)``, ``os.read(0, ...)``,
  threads and ``sys.exit()`` behave as on a judge, with no mocking (LiveCodeBench has to patch
  ``builtins.open`` and ``sys.stdin`` for that), and no state leaks from one case to the next.
  The cost is an interpreter start per case (about 20 ms here), inside the per-test limit.
- **functional problems** (LeetCode ``class Solution``): one child loads the solution (module
  code and ``Solution()``, under the per-test time limit, as LiveCodeBench's ``compile_code``)
  and runs all cases in order (as LiveCodeBench does in one process), with a per-case alarm. It
  reports each return value as tagged JSON (``encode``: lists, tuples, sets and dicts keep their
  types) on a private pipe; the candidate's own prints go to stderr. A value that is not plain
  data (an object with its own ``__eq__``) is a runtime error, not something to compare.

Grading follows LiveCodeBench (``lcb_runner/evaluation/testing_util.py``, since its Jan 2025
grader): stdin outputs are compared line by line after stripping the whole output and each
line; lines that differ must both parse as whitespace-separated ``Decimal`` numbers and be
equal as numbers ("1.50" equals "1.5"; there is no tolerance: "0.333333" does not equal
"0.3333333"). Functional results must equal the JSON-decoded expected value with ``==``, after a
top-level tuple is turned into a list. Every test, public ones first, must pass. Integers
convert to and from text up to 50,000 digits (LiveCodeBench raises Python's limit to that).

Deliberate differences from LiveCodeBench's harness, all in how the program runs, not in how it
is graded. The stdin program runs as a real script with real stdin and stdout; LiveCodeBench
wraps it in a function (a top-level name used through ``global`` then raises ``NameError``),
mocks stdin and captures stdout in a ``StringIO``, so ``sys.stdout.buffer``, ``os.read(0, ...)``
and ``open(0)`` (its imports shadow ``open`` with ``io.open``, which the mock misses) fail there
and work here; its imports run once, here they run in every case's time. A functional result
must be plain data (lists, tuples, dicts, sets, str, int, float, bool, None, or their
subclasses): an object with a custom ``__eq__`` fails instead of being trusted. Checked on
2026-11-23 against LiveCodeBench's own ``run_test`` on the solutions in tests/unit/test_lcb.py:
34 of 39 verdicts agreed, and the 5 others were exactly these cases. The report travels through
the sandbox's captured stdout (1 MiB): each case's output is zlib-compressed, and a problem
whose outputs still exceed it fails with that reason.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import zlib
from collections.abc import Iterator
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

# Tagged JSON for a functional result, the same in the candidate's process (``encode``) and the
# judge (``decode``): scalars as themselves, containers as one-key objects, so a tuple, a set or
# a dict with integer keys comes back as itself (plain JSON would turn {1: 2} into {"1": 2}).
ENCODE = """\
def encode(value, depth=0):
    if depth > 10000:
        raise ValueError("result nested too deeply")
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    for tag, base in (("l", list), ("t", tuple), ("s", set), ("f", frozenset)):
        if isinstance(value, base):
            return {tag: [encode(v, depth + 1) for v in base.__iter__(value)]}
    if isinstance(value, dict):
        return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(value)]}
    for base, convert in ((bool, bool), (int, int.__index__), (float, float.__float__), (str, str.__str__)):
        if isinstance(value, base):
            return convert(value)
    raise TypeError(f"returned a {kind.__name__}, not plain data")
"""

# The candidate's process for a functional problem: reads the argument lists as JSON on stdin,
# loads the solution under the per-test alarm (module code and ``Solution()``, as LiveCodeBench's
# ``compile_code``), then writes one JSON line per case to a private copy of stdout:
# ["ok", encode(result)], ["error", message] or ["timeout"]; stops at the first error or timeout.
FUNCTIONAL_DRIVER = """\
import json, os, signal, sys
if hasattr(sys, "set_int_max_str_digits"):
    sys.set_int_max_str_digits(%(digits)d)
report = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(2, 1)
func_name, timeout_s = sys.argv[1], float(sys.argv[2])
cases = json.loads(sys.stdin.read())
%(encode)s

class CaseTimeout(BaseException):
    pass


def on_alarm(signum, frame):
    raise CaseTimeout()


def send(message):
    report.write(json.dumps(message) + "\\n")
    report.flush()


signal.signal(signal.SIGALRM, on_alarm)
try:
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        namespace = {"__name__": "tmp_sol"}
        exec(%(imports)r, namespace)
        with open("solution.py", encoding="utf-8") as fh:
            source = fh.read()
        exec(compile(source, "solution.py", "exec"), namespace)
        owner = namespace["Solution"]() if "class Solution" in source else None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    method = getattr(owner, func_name) if owner is not None else namespace[func_name]
except CaseTimeout:
    send(["timeout", "loading the solution (module code and Solution())"])
    sys.exit(0)
except BaseException as exc:
    send(["error", f"{type(exc).__name__}: {exc}"])
    sys.exit(0)
for args in cases:
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            result = method(*args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if isinstance(result, tuple):
            result = list(result)
        message = ["ok", encode(result)]
    except CaseTimeout:
        send(["timeout"])
        break
    except BaseException as exc:
        send(["error", f"{type(exc).__name__}: {exc}"])
        break
    send(message)
""" % {"digits": INT_DIGITS, "imports": LCB_IMPORTS, "encode": ENCODE}  # noqa: UP031 (a program's text: %-format keeps its braces)

_DECODE_CONTAINERS = {"l": list, "t": tuple, "s": set, "f": frozenset}


def decode(value: object) -> object:
    """The value ``encode`` tagged (in the trusted judge: builds only builtin types)."""
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise ValueError("not a tagged value")
    [(tag, items)] = value.items()
    if tag == "d":
        return {decode(k): decode(v) for k, v in items}
    return _DECODE_CONTAINERS[tag](decode(v) for v in items)


@contextlib.contextmanager
def int_digits(limit: int = INT_DIGITS) -> Iterator[None]:
    """Python's int <-> str digit limit raised to ``limit`` inside the block (0 = unlimited stays)."""
    previous = sys.get_int_max_str_digits() if hasattr(sys, "get_int_max_str_digits") else 0
    if previous:
        sys.set_int_max_str_digits(max(previous, limit))
    try:
        yield
    finally:
        if previous:
            sys.set_int_max_str_digits(previous)


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


def _send(message: list) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def run_stdin(solution: str, inputs: list[str], timeout_s: float) -> None:
    """Box half: run the candidate once per input; report its output, stop at the first error."""
    with open("solution.py", "w", encoding="utf-8") as fh:
        fh.write(solution)
    with open("runner.py", "w", encoding="utf-8") as fh:
        fh.write(STDIN_RUNNER)
    for stdin in inputs:
        try:
            done = subprocess.run(
                [sys.executable, "-I", "runner.py"], input=stdin.encode(), capture_output=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            _send(["timeout"])
            return
        if done.returncode != 0:
            _send(["error", done.returncode, _error_tail(done.stderr)])
            return
        _send(["ok", base64.b64encode(zlib.compress(done.stdout)).decode()])


def run_functional(solution: str, func_name: str, inputs: list[str], timeout_s: float) -> None:
    """Box half: run all cases in one candidate process; pass its reports on."""
    with open("solution.py", "w", encoding="utf-8") as fh:
        fh.write(solution)
    with open("driver.py", "w", encoding="utf-8") as fh:
        fh.write(FUNCTIONAL_DRIVER)
    with int_digits():
        cases = [[json.loads(line) for line in text.split("\n")] for text in inputs]
        arguments = json.dumps(cases).encode()
    try:
        done = subprocess.run(
            [sys.executable, "-I", "driver.py", func_name, str(timeout_s)],
            input=arguments,
            capture_output=True,
            timeout=(timeout_s + 1) * (len(inputs) + 1),  # a backstop: loading and each case have an alarm
        )
    except subprocess.TimeoutExpired:
        _send(["timeout"])
        return
    lines = [line for line in done.stdout.decode(errors="replace").splitlines() if line.strip()]
    for line in lines:
        sys.stdout.write(line + "\n")
    if len(lines) < len(inputs) and not (lines and not lines[-1].startswith('["ok"')):
        _send(["error", f"exit {done.returncode}: {_error_tail(done.stderr)}"])
    sys.stdout.flush()


def main(spec_json: str) -> None:
    """Box half: ``{"kind", "func_name", "solution", "inputs", "timeout"}`` -> one report line per test."""
    spec = json.loads(spec_json)
    if spec["kind"] == "stdin":
        run_stdin(spec["solution"], spec["inputs"], spec["timeout"])
    else:
        run_functional(spec["solution"], spec["func_name"], spec["inputs"], spec["timeout"])


def _functional_mismatch(report: list, expected_json: str) -> str | None:
    try:
        got = decode(report[1])
    except (ValueError, KeyError, TypeError, RecursionError, MemoryError):
        return f"result {_short(report[1])} is not a comparable value"
    expected = json.loads(expected_json)
    if got != expected:
        return f"got {_short(got)}, expected {_short(expected_json)}"
    return None


def grade(kind: str, tests: list[dict], report: str, timeout_s: float) -> str | None:
    """Judge half (trusted process): None if the box's ``report`` passes every test, else why not.

    ``tests`` are the problem's cases with their expected outputs, which the box never had.
    """
    lines = []
    with int_digits():
        for text in report.splitlines():
            try:
                message = json.loads(text)
            except ValueError:
                continue  # not a report line: the candidate's own writes to the box's stdout
            if isinstance(message, list) and message and message[0] in ("ok", "error", "timeout"):
                lines.append(message)
        for number, test in enumerate(tests, 1):
            where = f"test {number}/{len(tests)} ({'public' if test['public'] else 'private'})"
            if number > len(lines):
                return f"{where}: no result from the sandbox"
            message = lines[number - 1]
            if message[0] == "timeout":
                during = f" {message[1]}" if len(message) > 1 else ""
                return f"{where}: time limit exceeded ({timeout_s}s){during}"
            if message[0] == "error":
                if kind == "stdin":
                    return f"{where}: runtime error (exit {message[1]}): {message[2]}"
                return f"{where}: runtime error: {_short(message[1], 300)}"
            if kind == "stdin":
                try:
                    got = zlib.decompress(base64.b64decode(message[1])).decode(errors="replace")
                except (ValueError, zlib.error):
                    return f"{where}: unreadable output report"
                why = stdout_mismatch(got, test["output"])
            else:
                why = _functional_mismatch(message, test["output"])
            if why:
                return f"{where}: wrong answer: {why}"
    return None
