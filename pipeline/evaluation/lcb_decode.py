"""Decode LiveCodeBench's private test cases without trusting pickle.

In ``code_generation_lite`` the field ``private_test_cases`` is
``base64(zlib(pickle.dumps(json.dumps(tests))))``. LiveCodeBench's own loader calls
``pickle.loads`` on it, which runs whatever a tampered file asks for (a ``__reduce__`` that calls
``os.system``). Here the unpickler resolves no global at all, so no callable can be reached and a
pickle can only build plain containers and scalars; the result must then be the JSON string the
format promises. Anything else is refused with an error that names the problem.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import zlib

MAX_DECOMPRESSED_BYTES = 1 << 30  # a zip bomb stops here instead of filling memory
PLAIN_TYPES = (str, bytes, int, float, bool, type(None), list, dict, tuple)


class LCBDecodeError(ValueError):
    """Private test cases that cannot be decoded safely; the message names the problem."""


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Refuses every global (classes, functions): the only way pickle reaches executable code."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refused global {module}.{name}: only plain data is allowed")


def _check_plain(value: object, problem_id: str, depth: int = 0) -> None:
    """Only str/bytes/int/float/bool/None/list/dict/tuple, with exact types (no subclasses)."""
    if type(value) not in PLAIN_TYPES:
        raise LCBDecodeError(f"problem {problem_id}: private_test_cases: refused value of type {type(value).__name__}")
    if depth > 100:
        raise LCBDecodeError(f"problem {problem_id}: private_test_cases: nested deeper than 100 levels")
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, problem_id, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, problem_id, depth + 1)
            _check_plain(item, problem_id, depth + 1)


def restricted_loads(data: bytes, problem_id: str) -> object:
    """``pickle.loads`` with no globals; the result is checked to be plain data."""
    try:
        value = _NoGlobalsUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise LCBDecodeError(f"problem {problem_id}: private_test_cases: {exc}") from None
    except Exception as exc:  # truncated or malformed pickles raise many types
        reason = f"{type(exc).__name__}: {exc}"
        raise LCBDecodeError(f"problem {problem_id}: private_test_cases: not a valid pickle ({reason})") from None
    _check_plain(value, problem_id)
    return value


def _inflate(data: bytes, problem_id: str, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, max_bytes)
    except zlib.error as exc:
        raise LCBDecodeError(f"problem {problem_id}: private_test_cases: not zlib data ({exc})") from None
    if inflater.unconsumed_tail:
        raise LCBDecodeError(f"problem {problem_id}: private_test_cases: more than {max_bytes} bytes decompressed")
    if not inflater.eof:
        raise LCBDecodeError(f"problem {problem_id}: private_test_cases: zlib data is truncated")
    return out


def check_tests(tests: object, problem_id: str, field: str) -> list[dict]:
    """A list of ``{"input": str, "output": str, "testtype": "stdin"|"functional"}``."""
    if not isinstance(tests, list):
        raise LCBDecodeError(
            f"problem {problem_id}: {field}: expected a list of test cases, got {type(tests).__name__}"
        )
    for i, test in enumerate(tests):
        where = f"problem {problem_id}: {field}[{i}]"
        if not isinstance(test, dict):
            raise LCBDecodeError(f"{where}: expected an object, got {type(test).__name__}")
        for key in ("input", "output"):
            if not isinstance(test.get(key), str):
                raise LCBDecodeError(f"{where}: field {key!r} must be a string")
        if test.get("testtype") not in ("stdin", "functional"):
            raise LCBDecodeError(
                f"{where}: field 'testtype' must be 'stdin' or 'functional', got {test.get('testtype')!r}"
            )
    return tests


def decode_private_tests(encoded: str, problem_id: str, max_bytes: int = MAX_DECOMPRESSED_BYTES) -> list[dict]:
    """The private test cases of one problem, decoded without executing anything.

    Like LiveCodeBench's loader, a field that is already a JSON list is read as JSON.
    """
    if not isinstance(encoded, str):
        raise LCBDecodeError(
            f"problem {problem_id}: private_test_cases: expected a string, got {type(encoded).__name__}"
        )
    if encoded.lstrip().startswith("["):
        try:
            return check_tests(json.loads(encoded), problem_id, "private_test_cases")
        except json.JSONDecodeError as exc:
            raise LCBDecodeError(f"problem {problem_id}: private_test_cases: invalid JSON ({exc.msg})") from None
    try:
        raw = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise LCBDecodeError(f"problem {problem_id}: private_test_cases: not base64 ({exc})") from None
    value = restricted_loads(_inflate(raw, problem_id, max_bytes), problem_id)
    if not isinstance(value, str):
        got = type(value).__name__
        raise LCBDecodeError(f"problem {problem_id}: private_test_cases: expected a pickled JSON string, got {got}")
    try:
        tests = json.loads(value)
    except json.JSONDecodeError as exc:
        raise LCBDecodeError(
            f"problem {problem_id}: private_test_cases: pickled text is not JSON ({exc.msg})"
        ) from None
    return check_tests(tests, problem_id, "private_test_cases")


def encode_private_tests(tests: list[dict]) -> str:
    """The format's encoding (what LiveCodeBench publishes); used to build fixtures."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode("ascii")
