"""Unit tests for httprunner.callbacks.signing: the secret file and Standard Webhooks signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest

from httprunner.callbacks import load_callback_secret, sign_webhook

from .callback_fakes import BODY, JOB_ID, Harness

# ---------------------------------------------------------------------------
# The secret file


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"whsec_" + _b64(b"\x00\x01binary-key\xff").encode() + b"\n", b"\x00\x01binary-key\xff"),
        (b"  plain secret  \nsecond line ignored\n", b"plain secret"),
        (b"s\xc3\xa9cret\r\n", "sécret".encode()),
        (b"no-newline", b"no-newline"),
    ],
)
def test_secret_file_formats(tmp_path: Any, content: bytes, expected: bytes) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    assert load_callback_secret(str(path)) == expected


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"   \n", "is empty"),
        (b"\nsecret on line two\n", "is empty"),
        (b"whsec_!!!not-base64\n", "not valid base64"),
        (b"whsec_\n", "is empty"),
        (b"\xff\xfe\n", "not UTF-8"),
    ],
)
def test_bad_secret_files_are_errors(tmp_path: Any, content: bytes, message: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_callback_secret(str(path))


def test_missing_secret_file_is_a_one_line_error(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="cannot read callback secret file") as excinfo:
        load_callback_secret(str(tmp_path / "absent"))
    assert "\n" not in str(excinfo.value)


# ---------------------------------------------------------------------------
# Signed deliveries


def _verify_standard_webhook(key: bytes, headers: dict[bytes, list[bytes]], body: bytes) -> bool:
    """Standard Webhooks verification, written from the spec independently of signing.py."""
    msg_id = headers[b"webhook-id"][0].decode()
    timestamp = headers[b"webhook-timestamp"][0].decode()
    signed_content = f"{msg_id}.{timestamp}.{body.decode('utf-8')}"
    expected = base64.b64encode(hmac.new(key, signed_content.encode("utf-8"), hashlib.sha256).digest()).decode()
    for signature in headers[b"webhook-signature"][0].decode().split(" "):
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return True
    return False


def test_signed_post_verifies_with_an_independent_standard_webhooks_check(tmp_path: Any) -> None:
    key = bytes(range(32))
    secret_file = tmp_path / "secret"
    secret_file.write_text("whsec_" + base64.b64encode(key).decode() + "\n")
    h = Harness(secret=load_callback_secret(str(secret_file)))
    h.deliver("http://127.0.0.1:8080/hook")
    _, headers, body = h.last.request()
    assert headers[b"webhook-id"] == [JOB_ID.encode()]
    assert headers[b"webhook-timestamp"] == [b"1700000000"]  # seconds
    assert _verify_standard_webhook(key, headers, body)
    assert not _verify_standard_webhook(b"another key", headers, body)
    assert not _verify_standard_webhook(key, headers, body + b" ")
    h.last.respond(204)
    h.finish()


def test_retries_send_the_same_bytes_with_fresh_timestamps_and_signatures() -> None:
    key = b"raw secret"
    h = Harness(secret=key, random=lambda: 0.5)
    delivery, results = h.deliver("http://127.0.0.1:8080/hook")
    bodies, ids, stamps = [], [], []
    for status, backoff in ((503, 1.0), (500, 2.0), (200, 0.0)):
        _, headers, body = h.last.request()
        assert _verify_standard_webhook(key, headers, body)
        bodies.append(body)
        ids.append(headers[b"webhook-id"][0])
        stamps.append(headers[b"x-notify-timestamp"][0])
        h.last.respond(status)
        h.reactor.advance(backoff)
    assert bodies == [BODY, BODY, BODY]
    assert ids == [JOB_ID.encode()] * 3  # stable across retries
    assert stamps == [b"1700000000250", b"1700000001250", b"1700000003250"]  # each attempt's time
    assert results == [delivery]
    assert delivery.to_json() == {"state": "delivered", "attempts": 3, "last_status": 200, "last_error": None}
    h.finish()


def test_signature_matches_the_standard_webhooks_published_test_vector(tmp_path: Any) -> None:
    # The specification's own example: any receiver library verifies what matches it.
    secret_file = tmp_path / "secret"
    secret_file.write_text("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n")
    signature = sign_webhook(
        load_callback_secret(str(secret_file)), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
