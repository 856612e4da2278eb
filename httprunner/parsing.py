"""Strict parsing of a job submission body.

``json.loads`` alone accepts too much: ``NaN``/``Infinity``, duplicate
keys (last wins), lone surrogates, a BOM, UTF-16/32 auto-detected from
bytes, and deep nesting raises ``RecursionError``.  Each of those is a
``400`` here, with a message that says what was wrong.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs

#: the seed's field is "args"; these are ours
MAX_CALLBACK_BYTES = 2048


class RequestError(Exception):
    """A request the client must fix: status and a human message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@attrs.frozen
class JobRequest:
    command: str
    args: list[str]
    callback: Any = None
    timeout: float | None = None
    stdin: bytes | None = None
    env: dict[str, str] = attrs.field(factory=dict)
    #: the cluster node to run on (None: any)
    node: str | None = None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise RequestError("duplicate key in JSON object: %r" % key)
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise RequestError("%s is not valid JSON" % name)


def _check_strings(value: Any, where: str) -> None:
    """Refuse NUL and lone surrogates in every string, keys included."""
    stack = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            _check_string(item, path)
        elif isinstance(item, dict):
            for key, sub in item.items():
                _check_string(key, path)
                stack.append((sub, "%s.%s" % (path, key)))
        elif isinstance(item, list):
            stack.extend((sub, "%s[%d]" % (path, i)) for i, sub in enumerate(item))


def _check_string(text: str, where: str) -> None:
    if "\x00" in text:
        raise RequestError("%s contains a NUL character" % where)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError("%s contains a lone surrogate (\\ud800-\\udfff escape)" % where) from None


def decode_json_object(body: bytes) -> dict[str, Any]:
    """Decode ``body`` as one strict UTF-8 JSON object."""
    if body.startswith(b"\xef\xbb\xbf"):
        raise RequestError("the body starts with a byte order mark; send plain UTF-8")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError("the body is not valid UTF-8 (byte %d)" % e.start) from None
    if not text.strip():
        raise RequestError('the body is empty; send a JSON object like {"command": "echo"}')
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except RequestError:
        raise
    except ValueError as e:
        # JSONDecodeError, and the int-digits limit on huge numbers
        raise RequestError("the body is not valid JSON: %s" % e) from None
    except RecursionError:
        raise RequestError("the body is nested too deeply") from None
    if not isinstance(document, dict):
        raise RequestError("the body must be a JSON object, not %s" % _json_type(document))
    _check_strings(document, "body")
    return document


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def parse_job_request(body: bytes) -> JobRequest:
    """Validate a ``POST /`` body into a :class:`JobRequest`.

    Unknown fields are ignored; a wrong type for a known one is an error.
    """
    document = decode_json_object(body)

    command = document.get("command")
    if not isinstance(command, str) or not command:
        if command is None:
            raise RequestError("missing field: command (the program to run)")
        raise RequestError("command must be a non-empty string, not %s" % _json_type(command))

    raw_args = document.get("args")
    if raw_args is None:
        args: list[str] = []
    elif isinstance(raw_args, str):
        # As the seed's split on /\s+/, without its empty words.
        args = raw_args.split()
    elif isinstance(raw_args, list):
        for i, item in enumerate(raw_args):
            if not isinstance(item, str):
                raise RequestError("args[%d] must be a string, not %s" % (i, _json_type(item)))
        args = raw_args
    else:
        raise RequestError("args must be a string or an array of strings, not %s" % _json_type(raw_args))

    callback = document.get("callback")
    if callback is not None and not isinstance(callback, str):
        raise RequestError("callback must be a URL string, not %s" % _json_type(callback))

    timeout = document.get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise RequestError("timeout must be a number of seconds, not %s" % _json_type(timeout))
        if not math.isfinite(timeout) or timeout <= 0:
            raise RequestError("timeout must be a finite number of seconds greater than 0")
        timeout = float(timeout)

    stdin = document.get("stdin")
    if stdin is not None:
        if not isinstance(stdin, str):
            raise RequestError("stdin must be a string, not %s" % _json_type(stdin))
        stdin = stdin.encode("utf-8")

    env = document.get("env")
    if env is None:
        env = {}
    elif isinstance(env, dict):
        for name, value in env.items():
            if not isinstance(value, str):
                raise RequestError("env[%r] must be a string, not %s" % (name, _json_type(value)))
            if not name or "=" in name:
                raise RequestError("env name %r is not a valid variable name" % name)
    else:
        raise RequestError("env must be an object of strings, not %s" % _json_type(env))

    node = document.get("node")
    if node is not None and (not isinstance(node, str) or not node):
        raise RequestError("node must be a node name (a non-empty string), not %s" % _json_type(node))

    return JobRequest(command=command, args=args, callback=callback, timeout=timeout, stdin=stdin, env=env, node=node)
