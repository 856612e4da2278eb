"""Signing callbacks the Standard Webhooks way (``--callback-secret-file``).

A signed callback carries ``webhook-id`` (the job id, stable across retries
so receivers can drop duplicates), ``webhook-timestamp`` (seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256 over id.timestamp.body>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

#: The secret file is small; reading more would only hide a wrong path.
_SECRET_READ_LIMIT = 65536


def load_callback_secret(path: str) -> bytes:
    """Read ``--callback-secret-file``: the first line, stripped.

    ``whsec_<base64>`` (the Standard Webhooks format) is the decoded key;
    anything else is the raw UTF-8 key. ValueError with a one-line message.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(_SECRET_READ_LIMIT)
    except OSError as e:
        raise ValueError(f"cannot read callback secret file {path!r}: {e.strerror}") from None
    lines = data.splitlines()
    try:
        line = (lines[0] if lines else b"").decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"callback secret file {path!r} is not UTF-8") from None
    if not line:
        raise ValueError(f"callback secret file {path!r} is empty (the secret is its first line)")
    if line.startswith("whsec_"):
        try:
            key = base64.b64decode(line[len("whsec_") :], validate=True)
        except ValueError:
            raise ValueError(f"callback secret file {path!r}: whsec_ secret is not valid base64") from None
        if not key:
            raise ValueError(f"callback secret file {path!r}: whsec_ secret is empty")
        return key
    return line.encode("utf-8")


def sign_webhook(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")
