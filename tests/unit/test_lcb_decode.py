"""Private test cases are decoded without ever running what a pickle asks for."""

import base64
import json
import os
import pickle
import zlib

import pytest
from conftest import DATA

from pipeline.evaluation.lcb_decode import LCBDecodeError, decode_private_tests, encode_private_tests

TESTS = [
    {"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
    {"input": "[1]", "output": "1", "testtype": "functional"},
]


def wrap(payload: bytes) -> str:
    """The lite format's outer layers around any pickle payload."""
    return base64.b64encode(zlib.compress(payload)).decode()


def test_round_trip_of_the_real_encoding():
    encoded = encode_private_tests(TESTS)
    # the layers are exactly base64(zlib(pickle(json string)))
    assert pickle.loads(zlib.decompress(base64.b64decode(encoded))) == json.dumps(TESTS)
    assert decode_private_tests(encoded, "abc001_a") == TESTS


def test_plain_json_field_is_read_as_json():
    assert decode_private_tests(json.dumps(TESTS), "p1") == TESTS


class SystemCall:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class Evaluate:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_reduce_is_refused_and_has_no_effect(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([SystemCall(f"touch {marker}")], protocol=protocol)
    assert b"system" in payload  # the payload really names os.system
    with pytest.raises(LCBDecodeError, match=r"problem 3999: private_test_cases: refused global (posix|os)\.system"):
        decode_private_tests(wrap(payload), "3999")
    assert not marker.exists()
    pickle.loads(payload)  # the same payload, unrestricted, does run: the test above is meaningful
    assert marker.exists()


def test_builtin_callables_are_refused_too():
    with pytest.raises(LCBDecodeError, match=r"problem q7: .*refused global builtins\.eval"):
        decode_private_tests(wrap(pickle.dumps(Evaluate())), "q7")


@pytest.mark.parametrize(
    "value,kind",
    [({1, 2}, "set"), (frozenset([1]), "frozenset"), (bytearray(b"x"), "bytearray"), ([{"a": {3}}], "set")],
)
def test_non_plain_values_are_refused(value, kind):
    # protocol 5 builds these with their own opcodes (no global), so the type check must catch them
    with pytest.raises(LCBDecodeError, match=rf"problem p: private_test_cases: refused value of type {kind}"):
        decode_private_tests(wrap(pickle.dumps(value, protocol=5)), "p")


@pytest.mark.parametrize(
    "encoded,message",
    [
        ("not base64 at all!", "not base64"),
        (base64.b64encode(b"plain bytes").decode(), "not zlib data"),
        (base64.b64encode(zlib.compress(pickle.dumps("x"))[:-6]).decode(), "truncated"),
        (wrap(b"\x80\x04garbage"), "pickle data was truncated"),
        (wrap(b"\xff"), "invalid load key"),
        (wrap(b"I12x\n."), "not a valid pickle \\(ValueError"),
        (wrap(pickle.dumps(42)), "expected a pickled JSON string, got int"),
        (wrap(pickle.dumps("{not json")), "pickled text is not JSON"),
        (wrap(pickle.dumps(json.dumps({"input": "1"}))), "expected a list of test cases, got dict"),
        (
            wrap(pickle.dumps(json.dumps([{"input": "1", "output": 2, "testtype": "stdin"}]))),
            r"\[0\]: field 'output' must be a string",
        ),
        (wrap(pickle.dumps(json.dumps([{"input": "1", "output": "2", "testtype": "x"}]))), r"\[0\]: field 'testtype'"),
    ],
)
def test_bad_fields_name_the_problem(encoded, message):
    with pytest.raises(LCBDecodeError, match=rf"^problem 1873_A: .*{message}"):
        decode_private_tests(encoded, "1873_A")


def test_decompression_is_capped():
    encoded = wrap(pickle.dumps(json.dumps([{"input": "x" * 100_000, "output": "", "testtype": "stdin"}])))
    assert len(encoded) < 2_000  # highly compressible: a small field, a large output
    with pytest.raises(LCBDecodeError, match="more than 10000 bytes decompressed"):
        decode_private_tests(encoded, "bomb", max_bytes=10_000)
    assert decode_private_tests(encoded, "bomb")[0]["input"] == "x" * 100_000


def test_fixture_private_tests_decode(tmp_path):
    fixture = DATA / "lcb_fixture.jsonl"
    for line in fixture.read_text().splitlines():
        record = json.loads(line)
        tests = decode_private_tests(record["private_test_cases"], record["question_id"])
        assert tests and all(set(t) == {"input", "output", "testtype"} for t in tests)
