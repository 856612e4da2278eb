"""Strict parsing of POST / bodies: every bad input class is a 400."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from httprunner.parsing import RequestError, parse_job_request


def test_seed_request_with_string_args() -> None:
    req = parse_job_request(b'{"command": "echo", "args": "foo  bar ", "callback": "http://x/"}')
    assert (req.command, req.args, req.callback) == ("echo", ["foo", "bar"], "http://x/")


@pytest.mark.parametrize(
    "args, expected",
    [
        ("", []),
        ("   ", []),
        ("a\tb\nc", ["a", "b", "c"]),
        ("a\u2003b", ["a", "b"]),
        (["a b", ""], ["a b", ""]),
        (None, []),
    ],
)
def test_args_forms(args: object, expected: list[str]) -> None:
    assert parse_job_request(json.dumps({"command": "x", "args": args}).encode()).args == expected


def test_extensions() -> None:
    req = parse_job_request(b'{"command":"cat","timeout":1.5,"stdin":"h\\u00e9","env":{"A":"1"},"unknown":[1,{"x":2}]}')
    assert (req.timeout, req.stdin, req.env) == (1.5, "hé".encode(), {"A": "1"})


@pytest.mark.parametrize(
    "body, fragment",
    [
        (b"", "empty"),
        (b"[]", "JSON object"),
        (b'"echo"', "JSON object"),
        (b"null", "JSON object"),
        (b"{", "not valid JSON"),
        (b'{"command":"echo","command":"rm"}', "duplicate key"),
        (b'{"command":"echo","timeout":NaN}', "NaN"),
        (b'{"command":"echo","timeout":Infinity}', "Infinity"),
        (b'{"command":"echo","timeout":1e999}', "finite"),
        (b'\xef\xbb\xbf{"command":"echo"}', "byte order mark"),
        (b'{"command":"\xff"}', "UTF-8"),
        ('{"command":"echo"}'.encode("utf-16"), "UTF-8"),
        (b'{"command":"ec\\u0000ho"}', "NUL"),
        (b'{"command":"echo","args":["\\ud800"]}', "surrogate"),
        (b'{"command":"echo","extra":{"k\\u0000":1}}', "NUL"),
        (b'{"args":"x"}', "missing field: command"),
        (b'{"command":""}', "non-empty"),
        (b'{"command":["echo"]}', "non-empty string"),
        (b'{"command":"echo","args":5}', "args must be"),
        (b'{"command":"echo","args":["a",1]}', "args[1]"),
        (b'{"command":"echo","callback":5}', "callback"),
        (b'{"command":"echo","timeout":"5"}', "timeout"),
        (b'{"command":"echo","timeout":true}', "timeout"),
        (b'{"command":"echo","timeout":0}', "greater than 0"),
        (b'{"command":"echo","timeout":-1}', "greater than 0"),
        (b'{"command":"echo","stdin":5}', "stdin"),
        (b'{"command":"echo","env":[]}', "env"),
        (b'{"command":"echo","env":{"A":1}}', "env"),
        (b'{"command":"echo","env":{"A=B":"1"}}', "valid variable name"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"command":"echo","timeout":' + b"9" * 5000 + b"}", "JSON"),
    ],
)
def test_bad_bodies_are_400_with_a_reason(body: bytes, fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_job_request(body)
    assert info.value.status == 400
    assert fragment in info.value.message


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_request_error(body: bytes) -> None:
    try:
        parse_job_request(body)
    except RequestError as e:
        assert e.status == 400


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@given(
    st.dictionaries(st.sampled_from(["command", "args", "callback", "timeout", "stdin", "env", "other"]), json_values)
)
def test_any_json_object_parses_or_raises_request_error(document: dict[str, Any]) -> None:
    try:
        req = parse_job_request(json.dumps(document).encode())
    except RequestError as e:
        assert e.status == 400
    else:
        assert isinstance(req.command, str) and req.command
        assert all(isinstance(a, str) for a in req.args)
