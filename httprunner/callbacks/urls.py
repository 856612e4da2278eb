"""Callback URLs: parsing, host normalisation, the check at submission.

The URL is parsed here with :func:`urllib.parse.urlsplit`, never by treq /
hyperlink (hyperlink rejects IPv6 literals and host names with ``_``).
Numeric IPv4 forms (``2130706433``, ``0x7f000001``, ``127.1``, octal) are
normalised the way ``inet_aton`` and browsers read them, so the guard sees
the address the connection would really reach.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, urlsplit

import idna

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Longest accepted callback URL, in UTF-8 bytes (DESIGN §2.1: 2 KiB).
MAX_CALLBACK_URL_BYTES = 2048

_CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f]")
_SURROGATES = re.compile("[\ud800-\udfff]")
# A host name label after IDNA: letters, digits, '-' and '_' (used by internal
# names, accepted by getaddrinfo), not starting or ending with '-'.
_LABEL = re.compile(r"\A(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")
# Characters of a request target that are sent percent-encoded: everything
# outside printable ASCII (Twisted refuses to send it) and the characters the
# URL standard encodes in paths/queries. '[' and ']' are included because
# hyperlink (inside treq) would re-encode them in queries anyway.
_TARGET_SAFE = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in '"<>\\^`{|}[]')
_NOT_A_STRING = "callback must be a string (an http or https URL)"
_DIGITS = {8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


class CallbackURLError(ValueError):
    """The ``callback`` of a request is unusable; ``str()`` is the reason for the client."""


# ---------------------------------------------------------------------------
# Hosts and addresses


def _parse_ipv4_number(part: str) -> int | None:
    """One dotted part as inet_aton / the URL standard read it: 0x hex, 0 octal, decimal."""
    if part[:2] in ("0x", "0X"):
        digits, base = part[2:], 16
        if digits == "":
            return 0
    elif len(part) > 1 and part[0] == "0":
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if not digits or any(c not in _DIGITS[base] for c in digits):
        return None
    return int(digits, base)


def _ends_in_number(host: str) -> bool:
    """The URL standard's test for "this host must be an IPv4 address"."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    last = parts[-1]
    if last and last.isascii() and last.isdigit():
        return True
    return last[:2] in ("0x", "0X") and _parse_ipv4_number(last) is not None


def normalize_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Read ``host`` the way ``inet_aton`` and browsers do, or ``None`` if it is a name.

    ``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1`` and ``0x7f.1``
    are all 127.0.0.1: a check on the text alone would miss that they reach
    loopback. Raises :class:`ValueError` for a host that ends in a number but
    is no valid address (``1.2.3.256``), as browsers refuse those.
    """
    if not host or not _ends_in_number(host):
        return None
    parts = host.split(".")
    if parts[-1] == "":
        parts.pop()
    if len(parts) > 4:
        raise ValueError(f"{host!r} is not a valid IPv4 address (more than 4 parts)")
    numbers = []
    for part in parts:
        number = _parse_ipv4_number(part)
        if number is None:
            raise ValueError(f"{host!r} is not a valid IPv4 address")
        numbers.append(number)
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise ValueError(f"{host!r} is not a valid IPv4 address (a part is out of range)")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def unmap(address: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` reaches a.b.c.d: check (and connect to) the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_ip_literal(text: str) -> IPAddress | None:
    """An IPv6 literal (with or without brackets) or any IPv4 form; ``None`` for a name."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        if "%" in text:
            raise ValueError(f"{text!r}: IPv6 zone identifiers are not supported")
        try:
            return unmap(ipaddress.IPv6Address(text))
        except ValueError:
            raise ValueError(f"{text!r} is not a valid IPv6 address") from None
    return normalize_ipv4(text)


def normalize_host_name(name: str) -> str:
    """Lower-case ASCII (IDNA) form of a DNS name; ValueError if it is not one."""
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as e:
            raise ValueError(f"{name!r} is not a valid host name ({e})") from None
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{name!r} is not a valid host name")
    return name


# ---------------------------------------------------------------------------
# URLs


@dataclass(frozen=True)
class CallbackTarget:
    """A checked callback URL, split into what a delivery needs."""

    scheme: str
    #: lower-case ASCII host name, or the address text for literal targets
    host: str
    #: the address for literal targets (numeric forms normalised), else None
    address: IPAddress | None
    port: int
    #: path and query, percent-encoded ASCII
    request_target: str
    #: the Host header value
    authority: str

    @property
    def log_url(self) -> str:
        """The URL for logs: without the query, which often carries a token."""
        return f"{self.scheme}://{self.authority}{self.request_target.split('?', 1)[0]}"


def parse_callback_url(value: str) -> CallbackTarget:
    """Parse and check a callback URL; :class:`CallbackURLError` says what is wrong."""
    if not isinstance(value, str):  # the JSON of a request can hold anything
        raise CallbackURLError(_NOT_A_STRING)
    return _parse_text(value)


@functools.lru_cache(maxsize=512)
def _parse_text(value: str) -> CallbackTarget:
    # Cached: most jobs of a daemon call back the same few URLs, and each is
    # parsed at submission and again at delivery (IDNA and the numeric IPv4
    # forms are not free).  The result is immutable; a refusal is not cached.
    if _SURROGATES.search(value):
        raise CallbackURLError("callback is not valid Unicode")
    if len(value.encode("utf-8")) > MAX_CALLBACK_URL_BYTES:
        raise CallbackURLError(f"callback URL is longer than {MAX_CALLBACK_URL_BYTES} bytes")
    # Before urlsplit, which silently deletes tabs and newlines.
    if _CONTROL_CHARS.search(value):
        raise CallbackURLError("callback URL contains control characters (CR, LF, ...)")
    if any(c.isspace() for c in value):
        raise CallbackURLError("callback URL contains whitespace; percent-encode it")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as e:
        raise CallbackURLError(f"callback is not a valid URL ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise CallbackURLError("callback must be an absolute http or https URL")
    if "@" in parts.netloc:
        raise CallbackURLError("callback URL must not contain user information (user:password@)")
    raw_host = parts.hostname or ""
    if not raw_host:
        raise CallbackURLError("callback URL has no host")
    if port == 0:
        raise CallbackURLError("callback URL port must be between 1 and 65535")
    try:
        address = parse_ip_literal(raw_host)
        host = str(address) if address is not None else normalize_host_name(raw_host)
    except ValueError as e:
        raise CallbackURLError(f"callback URL host: {e}") from None
    default_port = 443 if scheme == "https" else 80
    port = port or default_port
    host_text = f"[{host}]" if isinstance(address, ipaddress.IPv6Address) else host
    authority = host_text if port == default_port else f"{host_text}:{port}"
    request_target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        request_target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    return CallbackTarget(scheme, host, address, port, request_target, authority)


class AddressPolicy(Protocol):
    """What :func:`check_callback_url` asks of the guard (a :class:`~.guard.CallbackGuard`)."""

    def refusal(self, address: IPAddress, host_name: str | None = None) -> str | None: ...


def check_callback_url(value: object, guard: AddressPolicy) -> str | None:
    """Check a request's ``callback`` at submission; the URL to deliver to, or None.

    ``None`` and ``""`` mean no callback. A literal-IP target the guard
    refuses is an error now; a host name is resolved and checked at delivery.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise CallbackURLError(_NOT_A_STRING)
    target = parse_callback_url(value)
    if target.address is not None:
        reason = guard.refusal(target.address)
        if reason is not None:
            raise CallbackURLError(reason)
    return value
