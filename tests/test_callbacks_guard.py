"""Unit tests for httprunner.callbacks.guard: allowed targets at submission and at delivery."""

from __future__ import annotations

import pytest
from twisted.logger import capturedLogs

from httprunner.callbacks import CallbackGuard, CallbackURLError, check_callback_url

from .callback_fakes import JOB_ID, Harness

# ---------------------------------------------------------------------------
# At submission


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/",  # the same address, numeric
        "http://[fe80::1]/",
        "http://[::ffff:169.254.169.254]/",  # IPv4-mapped
    ],
)
def test_link_local_literal_targets_are_refused_at_submission(url: str) -> None:
    with pytest.raises(CallbackURLError, match="link-local"):
        check_callback_url(url, CallbackGuard())


def test_link_local_is_allowed_when_listed_explicitly() -> None:
    guard = CallbackGuard(["169.254.169.254", "fe80::/10"])
    assert check_callback_url("http://169.254.169.254/x", guard) is not None
    assert check_callback_url("http://[fe80::1]/x", guard) is not None


def test_allow_list_refuses_literal_targets_outside_it_at_submission() -> None:
    guard = CallbackGuard(["10.0.0.0/8", "hooks.example.com"])
    assert check_callback_url("http://10.1.2.3/x", guard)
    assert check_callback_url("http://0x0a000001/x", guard)  # 10.0.0.1
    for url in ("http://192.168.1.1/x", "http://127.1/x", "http://2130706433/x", "http://[::1]/x"):
        with pytest.raises(CallbackURLError, match="not allowed by --callback-allow"):
            check_callback_url(url, guard)
    # Names are resolved and checked at delivery, not at submission.
    assert check_callback_url("http://other.example.com/x", guard)


def test_allow_list_entries_are_normalised() -> None:
    guard = CallbackGuard([" Hooks.Example.COM. ", "127.1", "[::1]", "fd00::/8"])
    assert guard.names == frozenset({"hooks.example.com"})
    assert [str(n) for n in guard.networks] == ["127.0.0.1/32", "::1/128", "fd00::/8"]
    assert guard.restricted
    assert not CallbackGuard().restricted


@pytest.mark.parametrize(
    "entry, message",
    [
        ("", "empty entry"),
        ("   ", "empty entry"),
        ("10.0.0.0/33", "not a valid CIDR"),
        ("10.0.0.1/8", "not a valid CIDR"),  # host bits set
        ("10.0.0.0/abc", "not a valid CIDR"),
        ("*.example.com", "wildcards"),
        ("example.com:8080", "without a port"),
        ("not a host!", "not a valid host name"),
        ("1.2.3.256", "not a valid IPv4 address"),
        ("fe80::1%eth0", "zone"),
        ("::g", "not a valid IPv6 address"),
    ],
)
def test_bad_allow_entries_stop_startup_with_one_line(entry: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        CallbackGuard(["10.0.0.0/8", entry])
    text = str(excinfo.value)
    assert text.startswith("--callback-allow ")
    assert message in text
    assert "\n" not in text


# ---------------------------------------------------------------------------
# At delivery (a fake resolver and fake TCP)


def test_every_resolved_address_is_checked_and_a_refusal_is_final() -> None:
    h = Harness({"mixed.example": ["10.0.0.5", "192.168.0.9"]}, guard=CallbackGuard(["10.0.0.0/8"]))
    delivery, results = h.deliver("http://mixed.example/cb")
    assert results == [delivery]
    assert delivery.state == "refused"
    assert delivery.attempts == 0 and delivery.last_status is None
    assert "192.168.0.9" in (delivery.last_error or "")
    assert h.network.connects == []  # no connection attempted
    assert h.reactor.getDelayedCalls() == []  # no retry
    h.finish()


@pytest.mark.parametrize("address", ["169.254.169.254", "fe80::1", "::ffff:169.254.169.254"])
def test_a_name_resolving_to_link_local_is_refused_without_a_connection(address: str) -> None:
    h = Harness({"metadata.example": [address]})
    delivery, results = h.deliver("http://metadata.example/latest")
    assert results == [delivery]
    assert delivery.state == "refused" and "link-local" in (delivery.last_error or "")
    assert h.network.connects == []
    h.finish()


def test_a_listed_name_may_resolve_anywhere_except_link_local() -> None:
    h = Harness(
        {"hooks.example.com": ["192.168.1.10"], "evil.example.com": ["169.254.169.254"]},
        guard=CallbackGuard(["hooks.example.com", "evil.example.com"]),
    )
    ok, _ = h.deliver("http://hooks.example.com/cb")
    assert h.network.connects == [("192.168.1.10", 80)]
    h.last.respond(200)
    refused, _ = h.deliver("http://evil.example.com/cb")
    assert (ok.state, refused.state) == ("delivered", "refused")
    assert len(h.network.connects) == 1
    h.finish()


def test_an_unlisted_name_is_refused_at_delivery() -> None:
    h = Harness({"other.example": ["192.168.1.10"]}, guard=CallbackGuard(["hooks.example.com"]))
    delivery, _ = h.deliver("http://other.example/cb")
    assert delivery.state == "refused" and "--callback-allow" in (delivery.last_error or "")
    assert h.network.connects == []
    h.finish()


def test_a_literal_target_refused_by_the_guard_at_delivery_makes_no_connection() -> None:
    h = Harness(guard=CallbackGuard(["10.0.0.0/8"]))
    delivery, results = h.deliver("http://192.168.1.1/cb")
    assert results == [delivery]
    assert (delivery.state, delivery.attempts) == ("refused", 0)
    assert h.network.connects == []
    h.finish()


def test_refusals_are_logged() -> None:
    h = Harness({"metadata.example": ["169.254.169.254"]})
    with capturedLogs() as events:
        h.deliver("http://metadata.example/")
    assert any(e.get("state") == "refused" and e.get("job_id") == JOB_ID for e in events)
    h.finish()
