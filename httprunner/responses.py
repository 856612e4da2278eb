"""JSON response helpers shared by every layer that answers HTTP requests.

Every error the daemon produces has the same shape:
``{"message": "<HTTP reason phrase>", "error": "<what was wrong>"}``.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from twisted.web.iweb import IRequest

JSON_TYPE = b"application/json"


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def dump_json(obj: Any) -> bytes:
    """Serialise ``obj`` the one way the daemon does: compact UTF-8 JSON."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def error_body(status: int, error: str) -> bytes:
    return dump_json({"message": reason_phrase(status), "error": error})


def json_response(request: IRequest, status: int, body: bytes) -> bytes:
    """Set status and JSON content type on ``request``; return ``body``."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    # A known length spares the chunked framing (and suits the seed's clients).
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def json_error(request: IRequest, status: int, error: str) -> bytes:
    return json_response(request, status, error_body(status, error))
