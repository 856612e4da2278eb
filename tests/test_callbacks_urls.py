"""Unit tests for httprunner.callbacks.urls: parsing and normalising callback URLs."""

from __future__ import annotations

from typing import Any

import pytest

from httprunner.callbacks import (
    MAX_CALLBACK_URL_BYTES,
    CallbackGuard,
    CallbackURLError,
    check_callback_url,
    normalize_ipv4,
    parse_callback_url,
)

LONG_HOST_URL = "http://example.com/" + "a" * (MAX_CALLBACK_URL_BYTES - len("http://example.com/"))


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",
        "https://example.com:8443/hook?x=1&y=%20",
        "HTTP://Example.COM/",
        "http://[::1]:8080/x",
        "http://127.0.0.1:9000",
        "http://internal_host.lan/cb",
        "http://bücher.example/ü",
        LONG_HOST_URL,  # exactly 2048 bytes
    ],
)
def test_valid_callback_urls_are_accepted_unchanged(url: str) -> None:
    assert check_callback_url(url, CallbackGuard()) == url


@pytest.mark.parametrize("value", [None, ""])
def test_null_or_empty_callback_means_no_callback(value: Any) -> None:
    assert check_callback_url(value, CallbackGuard()) is None


@pytest.mark.parametrize(
    "value, message",
    [
        (123, "must be a string"),
        (["http://example.com/"], "must be a string"),
        ({"url": "http://example.com/"}, "must be a string"),
        ("ftp://example.com/x", "absolute http or https"),
        ("javascript:alert(1)", "absolute http or https"),
        ("example.com/hook", "absolute http or https"),
        ("/relative/path", "absolute http or https"),
        ("http:example.com", "absolute http or https"),
        ("http://user:pw@example.com/", "user information"),
        ("http://user@example.com/", "user information"),
        ("http://good.example\\@evil.example/", "user information"),
        ("http://example.com/\r\nX-Injected: 1", "control characters"),
        ("http://example.com/a\nb", "control characters"),
        ("http://exa\tmple.com/", "control characters"),
        ("http://example.com/\x00", "control characters"),
        ("http://example.com/\x7f", "control characters"),
        ("http://example.com/a b", "whitespace"),
        (LONG_HOST_URL + "a", "longer than 2048 bytes"),
        ("http://example.com/" + "é" * 1100, "longer than 2048 bytes"),  # < 2048 chars
        ("http:///nohost", "absolute http or https"),
        ("http://:80/", "no host"),
        ("http://example.com:0/", "port"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://example.com:abc/", "not a valid URL"),
        ("http://[::1/", "not a valid URL"),
        ("http://[fe80::1%25eth0]/", "zone"),
        ("http://1.2.3.256/", "not a valid IPv4 address"),
        ("http://1.2.3.4.5/", "not a valid IPv4 address"),
        ("http://ex%61mple.com/", "not a valid host name"),
        ("http://exa!mple.com/", "not a valid host name"),
        ("http://\ud800.example/", "not valid Unicode"),
    ],
)
def test_bad_callback_urls_are_rejected_with_a_reason(value: Any, message: str) -> None:
    with pytest.raises(CallbackURLError) as excinfo:
        check_callback_url(value, CallbackGuard())
    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x7f.0.0.0x1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("2852039166", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("0", "0.0.0.0"),
        ("example.com", None),
        ("1.2.3.4.example", None),
        ("0x7f.example", None),
    ],
)
def test_numeric_hosts_are_normalised_like_inet_aton(host: str, expected: str | None) -> None:
    result = normalize_ipv4(host)
    assert (str(result) if result is not None else None) == expected


@pytest.mark.parametrize(
    "host", ["1.2.3.4.5", "256.0.0.1", "1.2.3.256", "1.2.65536", "4294967296", "08.0.0.1", "1.2.3.09"]
)
def test_numeric_hosts_that_are_no_address_are_errors(host: str) -> None:
    with pytest.raises(ValueError):
        normalize_ipv4(host)


def test_parsed_target_for_ipv6_literal_keeps_brackets_in_host_header() -> None:
    target = parse_callback_url("http://[::1]:8080/x?q=1#frag")
    assert (target.host, target.port, target.request_target, target.authority) == (
        "::1",
        8080,
        "/x?q=1",
        "[::1]:8080",
    )
    assert parse_callback_url("https://[::1]/").authority == "[::1]"


def test_parsed_target_encodes_non_ascii_path_and_idn_host() -> None:
    target = parse_callback_url("http://Bücher.Example:80/ü?q=é")
    assert target.host == "xn--bcher-kva.example"
    assert target.authority == "xn--bcher-kva.example"
    assert target.request_target == "/%C3%BC?q=%C3%A9"
