"""Tests for httprunner.guard: bearer tokens, Host and Origin checks."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyChannel

from httprunner.guard import (
    ConfigError,
    GuardedResource,
    HostPolicy,
    TokenFile,
    install_reload_on_sighup,
    is_local_endpoint,
    refuse_anonymous_exposure,
)
from httprunner.responses import dump_json

TOKEN = b"s3cret-token-0123456789abcdef"
OTHER_TOKEN = b"another-token-abcdefghijklmnop"
LOOPBACK = ["tcp:port=9000:interface=127.0.0.1"]


class TinyApp:
    """A stand-in for the real API: a few routes, and a count of POSTs."""

    app = Klein()

    def __init__(self) -> None:
        self.created = 0

    @app.route("/", methods=["POST"])
    def create(self, request):
        self.created += 1
        request.setResponseCode(202)
        request.setHeader(b"Content-Type", b"application/json")
        return dump_json({"id": "job"})

    @app.route("/", methods=["GET"])
    def index(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return dump_json({"route": "index"})

    @app.route("/healthz")
    def healthz(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return dump_json({"status": "ok"})

    @app.route("/jobs")
    def jobs(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        return dump_json({"jobs": [], "prepath": [p.decode() for p in request.prepath]})


def token_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tokens"
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def guarded(
    tmp_path: Path | None = None,
    tokens_text: str | None = None,
    endpoints=LOOPBACK,
    allowed_hosts=(),
    allowed_origins=(),
):
    tiny = TinyApp()
    tokens = TokenFile(token_file(tmp_path, tokens_text)) if tokens_text is not None else None
    policy = HostPolicy.from_listeners(list(endpoints), list(allowed_hosts), list(allowed_origins))
    return tiny, GuardedResource(tiny.app.resource(), tokens=tokens, hosts=policy)


async def call(resource, method="GET", url="http://127.0.0.1:9000/jobs", headers=None):
    """One request through the whole twisted.web stack, in memory."""
    stub = StubTreq(resource)
    response = await stub.request(method, url, headers=headers or {})
    body = await response.content()
    return response.code, response.headers, body


LOOPBACK_9000 = IPv4Address("TCP", "127.0.0.1", 9000)


def raw_exchange(resource, data: bytes, local=LOOPBACK_9000):
    """Feed raw request bytes to a Site; return (status, raw response)."""
    site = server.Site(resource)
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(hostAddress=local, peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
    response = transport.value()
    protocol.connectionLost(None)
    return int(response.split(b" ", 2)[1]), response


def all_log_text(events) -> str:
    return "\n".join(f"{formatEvent(e)} {e!r}" for e in events)


# --------------------------------------------------------------------------
# Tokens over HTTP


@pytest_twisted.ensureDeferred
async def test_without_authorization_header_answers_401_with_bearer_challenge(tmp_path):
    _, resource = guarded(tmp_path, TOKEN.decode())
    code, headers, body = await call(resource)
    assert code == 401
    assert headers.getRawHeaders(b"www-authenticate") == [b'Bearer realm="httprunner"']
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    payload = json.loads(body)
    assert payload["message"] == "Unauthorized"
    assert "Authorization: Bearer" in payload["error"]


@pytest_twisted.ensureDeferred
async def test_right_token_reaches_the_app(tmp_path):
    _, resource = guarded(tmp_path, TOKEN.decode())
    code, _, body = await call(resource, headers={"Authorization": b"Bearer " + TOKEN})
    assert code == 200
    # The wrapped Klein app saw the whole path, as if it were the root.
    assert json.loads(body) == {"jobs": [], "prepath": ["jobs"]}


@pytest.mark.parametrize(
    "presented",
    [
        TOKEN[:-1] + b"X",  # same length
        TOKEN[:-3],  # shorter
        TOKEN + b"extra",  # longer, with the right prefix
        OTHER_TOKEN,
    ],
    ids=["same-length", "shorter", "longer", "other"],
)
@pytest_twisted.ensureDeferred
async def test_wrong_token_answers_401_invalid_token(tmp_path, presented):
    tiny, resource = guarded(tmp_path, TOKEN.decode())
    code, headers, body = await call(
        resource, "POST", "http://127.0.0.1:9000/", {"Authorization": b"Bearer " + presented}
    )
    assert code == 401
    assert headers.getRawHeaders(b"www-authenticate") == [b'Bearer realm="httprunner", error="invalid_token"']
    assert json.loads(body)["error"] == "invalid bearer token"
    assert tiny.created == 0


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER", b"BeArEr"])
@pytest_twisted.ensureDeferred
async def test_bearer_scheme_is_case_insensitive(tmp_path, scheme):
    _, resource = guarded(tmp_path, TOKEN.decode())
    code, _, _ = await call(resource, headers={"Authorization": scheme + b" " + TOKEN})
    assert code == 200


@pytest.mark.parametrize("authorization", [b"Basic " + TOKEN, TOKEN, b"Bearer", b"Bearer    ", b"Token " + TOKEN])
@pytest_twisted.ensureDeferred
async def test_other_schemes_and_empty_bearer_count_as_missing(tmp_path, authorization):
    _, resource = guarded(tmp_path, TOKEN.decode())
    code, headers, _ = await call(resource, headers={"Authorization": authorization})
    assert code == 401
    assert headers.getRawHeaders(b"www-authenticate") == [b'Bearer realm="httprunner"']


@pytest.mark.parametrize("name", ["token", "access_token"])
@pytest_twisted.ensureDeferred
async def test_token_in_query_string_is_never_accepted(tmp_path, name):
    tiny, resource = guarded(tmp_path, TOKEN.decode())
    url = f"http://127.0.0.1:9000/?{name}={TOKEN.decode()}"
    code, _, body = await call(resource, "POST", url)
    assert code == 401
    assert "query string" in json.loads(body)["error"]
    assert tiny.created == 0


@pytest_twisted.ensureDeferred
async def test_healthz_is_open_without_token(tmp_path):
    _, resource = guarded(tmp_path, TOKEN.decode())
    code, _, body = await call(resource, url="http://127.0.0.1:9000/healthz")
    assert code == 200
    assert json.loads(body) == {"status": "ok"}


@pytest.mark.parametrize("path", ["/no/such/route", "/metrics", "/openapi.json", "/healthz/x"])
@pytest_twisted.ensureDeferred
async def test_every_other_path_needs_a_token_even_unknown_ones(tmp_path, path):
    _, resource = guarded(tmp_path, TOKEN.decode())
    code, _, _ = await call(resource, url="http://127.0.0.1:9000" + path)
    assert code == 401


@pytest_twisted.ensureDeferred
async def test_without_token_file_no_token_is_needed(tmp_path):
    tiny, resource = guarded()
    code, _, _ = await call(resource, "POST", "http://127.0.0.1:9000/")
    assert code == 202
    assert tiny.created == 1


@pytest_twisted.ensureDeferred
async def test_two_authorization_headers_are_refused(tmp_path):
    _, resource = guarded(tmp_path, TOKEN.decode())
    code, _, _ = await call(resource, headers={"Authorization": [b"Bearer " + TOKEN, b"Bearer " + OTHER_TOKEN]})
    assert code == 401


@pytest_twisted.ensureDeferred
async def test_tokens_never_appear_in_logs(tmp_path):
    _, resource = guarded(tmp_path, f"{TOKEN.decode()}\n")
    with capturedLogs() as events:
        await call(resource, headers={"Authorization": b"Bearer " + OTHER_TOKEN})
        await call(resource, url=f"http://127.0.0.1:9000/?token={OTHER_TOKEN.decode()}")
        await call(resource, headers={"Authorization": b"Bearer " + TOKEN})
        TokenFile(token_file(tmp_path, f"{TOKEN.decode()}\nshort\n")).reload()
    text = all_log_text(events)
    assert TOKEN.decode() not in text
    assert OTHER_TOKEN.decode() not in text
    assert "short" not in text.replace("shorter", "")
    # The refusals were logged, one event each, with peer and reason.
    refusals = [e for e in events if e.get("reason")]
    assert [e["reason"] for e in refusals] == ["invalid token", "missing token"]
    assert all(e["peer"] == "127.0.0.1:31337" for e in refusals)


# --------------------------------------------------------------------------
# The token file


def test_token_file_skips_comments_blank_lines_and_whitespace(tmp_path):
    tokens = TokenFile(
        token_file(
            tmp_path,
            f"# deploy robots\n\n   {TOKEN.decode()}  \n\t# old one below\n{OTHER_TOKEN.decode()}\r\n",
        )
    )
    assert tokens.count == 2
    assert tokens.check(TOKEN)
    assert tokens.check(OTHER_TOKEN)
    assert not tokens.check(b"# deploy robots")
    assert not tokens.check(b"")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   \n"])
def test_token_file_without_tokens_is_a_config_error(tmp_path, text):
    with pytest.raises(ConfigError, match="--token-file .*no tokens"):
        TokenFile(token_file(tmp_path, text))


def test_missing_token_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        TokenFile(str(tmp_path / "absent"))


def test_token_with_inner_space_is_a_config_error_that_does_not_echo_it(tmp_path):
    with pytest.raises(ConfigError) as info:
        TokenFile(token_file(tmp_path, "# c\ntoken = abcdefghijklmnopqrs\n"))
    assert "line 2" in str(info.value)
    assert "abcdefghijklmnopqrs" not in str(info.value)


def test_reload_replaces_tokens_and_keeps_old_ones_when_file_becomes_unusable(tmp_path):
    path = token_file(tmp_path, TOKEN.decode())
    tokens = TokenFile(path)
    Path(path).write_text(OTHER_TOKEN.decode())
    with capturedLogs() as events:
        assert tokens.reload() is True
    assert tokens.check(OTHER_TOKEN) and not tokens.check(TOKEN)
    assert any(e.get("count") == 1 and "reloaded" in formatEvent(e) for e in events)

    Path(path).write_text("# emptied by mistake\n")
    with capturedLogs() as events:
        assert tokens.reload() is False
    assert tokens.check(OTHER_TOKEN)
    assert [e["log_level"].name for e in events] == ["error"]

    os.unlink(path)
    assert tokens.reload() is False
    assert tokens.check(OTHER_TOKEN)


def test_world_readable_token_file_is_warned_about(tmp_path):
    path = token_file(tmp_path, TOKEN.decode())
    os.chmod(path, 0o644)
    with capturedLogs() as events:
        TokenFile(path)
    assert any("readable by every user" in formatEvent(e) for e in events)


@pytest_twisted.ensureDeferred
async def test_sighup_reloads_tokens_with_a_real_signal(tmp_path):
    from twisted.internet import reactor

    path = token_file(tmp_path, TOKEN.decode())
    tokens = TokenFile(path)
    resource = GuardedResource(
        TinyApp().app.resource(), tokens=tokens, hosts=HostPolicy.from_listeners(LOOPBACK, [], [])
    )
    before = signal.getsignal(signal.SIGHUP)
    uninstall = install_reload_on_sighup(reactor, tokens)
    try:
        Path(path).write_text(f"# rotated\n{OTHER_TOKEN.decode()}\n")
        with capturedLogs() as events:
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(100):
                if tokens.check(OTHER_TOKEN):
                    break
                await deferLater(reactor, 0.01, lambda: None)
    finally:
        uninstall()
    assert signal.getsignal(signal.SIGHUP) == before
    assert any("tokens reloaded" in formatEvent(e) and e["count"] == 1 for e in events)
    new_code, _, _ = await call(resource, headers={"Authorization": b"Bearer " + OTHER_TOKEN})
    old_code, _, _ = await call(resource, headers={"Authorization": b"Bearer " + TOKEN})
    assert (new_code, old_code) == (200, 401)
    assert TOKEN.decode() not in all_log_text(events)


def test_uninstall_restores_the_previous_sighup_handler(tmp_path):
    calls = []
    tokens = TokenFile(token_file(tmp_path, TOKEN.decode()))

    class FakeReactor:
        def callFromThread(self, f, *args):
            calls.append(f)

    before = signal.getsignal(signal.SIGHUP)
    uninstall = install_reload_on_sighup(FakeReactor(), tokens)
    try:
        handler = signal.getsignal(signal.SIGHUP)
        handler(signal.SIGHUP, None)
        # The handler only schedules: the reload runs on the reactor thread.
        assert calls == [tokens.reload]
    finally:
        uninstall()
    assert signal.getsignal(signal.SIGHUP) == before


# --------------------------------------------------------------------------
# Host


@pytest.mark.parametrize(
    "host, expected",
    [
        ("localhost", 202),
        ("localhost:9000", 202),
        ("LOCALHOST:9000", 202),
        ("localhost.:9000", 202),
        ("127.0.0.1", 202),
        ("127.0.0.1:9000", 202),
        ("[::1]", 202),
        ("[::1]:9000", 202),
        ("localhost:8080", 202),  # a port forward to this listener
        ("evil.example", 400),
        ("evil.example:9000", 400),
        ("127.0.0.2:9000", 400),
        ("10.0.0.5:9000", 400),
        ("::1", 400),
        ("localhost:abc", 400),
        ("localhost:99999", 400),
        ("[::1", 400),
        ("", 400),
        ("runner.lan", 202),
        ("runner.lan:9000", 202),
        ("RUNNER.LAN:80", 202),
    ],
)
@pytest_twisted.ensureDeferred
async def test_host_header_on_loopback_listener(host, expected):
    tiny, resource = guarded(allowed_hosts=["runner.lan"])
    code, _, body = await call(resource, "POST", "http://127.0.0.1:9000/", {"Host": host})
    assert code == expected
    if expected == 400:
        assert json.loads(body)["message"] == "Bad Request"
        assert tiny.created == 0


def test_request_without_host_header_passes():
    _, resource = guarded()
    status, response = raw_exchange(resource, b"GET /jobs HTTP/1.0\r\n\r\n")
    assert status == 200
    assert b'"jobs":[]' in response


def test_two_host_headers_are_refused():
    _, resource = guarded()
    status, _ = raw_exchange(resource, b"GET /jobs HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n")
    assert status == 400


def test_host_check_runs_before_token_check(tmp_path):
    _, resource = guarded(tmp_path, TOKEN.decode())
    status, _ = raw_exchange(resource, b"GET /jobs HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    assert status == 400


@pytest.mark.parametrize(
    "endpoints, allowed, host, ok",
    [
        (["tcp:9000"], [], b"anything.example", True),
        (["tcp6:9000"], [], b"anything.example:9000", True),
        (["tcp:9000"], ["runner.lan"], b"runner.lan:9000", True),
        (["tcp:9000"], ["runner.lan"], b"evil.example:9000", False),
        # Addresses and "localhost" cannot be an attacker's DNS name.
        (["tcp:9000"], ["runner.lan"], b"192.168.1.5:9000", True),
        (["tcp:9000"], ["runner.lan"], b"localhost:9000", True),
        (["tcp:9000:interface=192.168.1.5"], [], b"192.168.1.5:9000", True),
        (["tcp:9000:interface=192.168.1.5"], [], b"localhost:9000", False),
        (["tcp:9000:interface=192.168.1.5"], [], b"evil.example", False),
        (["tcp6:9000:interface=\\:\\:1"], [], b"[::1]:9000", True),
        (["tcp:9000:interface=127.0.0.5"], [], b"127.0.0.5", True),
        (["unix:/run/httprunner.sock"], [], b"whatever", True),
        (["unix:/run/httprunner.sock"], ["runner.lan"], b"evil.example", False),
        (["systemd:domain=INET:index=0"], [], b"whatever", True),
        (["tcp:9000"], ["::1"], b"[::1]", True),
    ],
)
def test_host_policy_table(endpoints, allowed, host, ok):
    policy = HostPolicy.from_listeners(endpoints, allowed, [])
    assert policy.host_allowed(host, False) is ok
    assert policy.host_allowed(None, False) is True


def test_host_rules_follow_the_listener_the_request_came_in_on():
    policy = HostPolicy.from_listeners(["tcp:9000:interface=127.0.0.1", "unix:/run/h.sock"], [], [])
    tcp = IPv4Address("TCP", "127.0.0.1", 9000)
    # A unix listener admits any Host, but that must not open the TCP one.
    assert not policy.host_allowed(b"evil.example", False, local=tcp)
    assert policy.host_allowed(b"evil.example", False, local=UNIXAddress(b"/run/h.sock"))


@pytest.mark.parametrize("bad", ["runner.lan:9000", "http://runner.lan", "bad name", ""])
def test_malformed_allowed_host_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="--allowed-host"):
        HostPolicy.from_listeners(LOOPBACK, [bad], [])


# --------------------------------------------------------------------------
# Origin


@pytest.mark.parametrize(
    "url, origin, expected",
    [
        ("http://localhost:9000/", "http://localhost:9000", 202),
        ("http://127.0.0.1:9000/", "http://127.0.0.1:9000", 202),
        ("http://127.0.0.1:9000/", "HTTP://127.0.0.1:9000", 202),
        ("https://localhost:9000/", "https://localhost:9000", 202),
        ("https://localhost:9000/", "http://localhost:9000", 403),
        ("http://localhost:9000/", "http://localhost:9001", 403),
        ("http://localhost:9000/", "http://127.0.0.1:9000", 403),
        ("http://localhost:9000/", "https://evil.example", 403),
        ("http://localhost:9000/", "null", 403),
        ("http://localhost:9000/", "", 403),
        ("http://localhost:9000/", "http://localhost:9000/path", 403),
        ("http://localhost:9000/", "https://dashboard.example", 202),
        ("http://localhost:9000/", "https://dashboard.example:443", 202),
        ("http://localhost:9000/", "http://dashboard.example", 403),
    ],
)
@pytest_twisted.ensureDeferred
async def test_origin_table(url, origin, expected):
    tiny, resource = guarded(allowed_origins=["https://dashboard.example"])
    code, _, body = await call(resource, "POST", url, {"Origin": origin})
    assert code == expected
    assert tiny.created == (1 if expected == 202 else 0)
    if expected == 403:
        assert json.loads(body)["message"] == "Forbidden"


@pytest_twisted.ensureDeferred
async def test_origin_is_checked_before_the_token(tmp_path):
    tiny, resource = guarded(tmp_path, TOKEN.decode())
    code, _, _ = await call(
        resource,
        "POST",
        "http://127.0.0.1:9000/",
        {"Origin": "https://evil.example", "Authorization": b"Bearer " + TOKEN},
    )
    assert code == 403
    assert tiny.created == 0


def test_origin_without_host_header_is_refused():
    _, resource = guarded()
    status, _ = raw_exchange(resource, b"POST / HTTP/1.0\r\nOrigin: http://127.0.0.1:9000\r\nContent-Length: 0\r\n\r\n")
    assert status == 403


@pytest.mark.parametrize("bad", ["null", "*", "localhost:9000", "ftp://x.example"])
def test_unusable_allowed_origin_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="--allowed-origin"):
        HostPolicy.from_listeners(LOOPBACK, [], [bad])


# --------------------------------------------------------------------------
# Listeners


@pytest.mark.parametrize(
    "description, local",
    [
        ("tcp:port=9000:interface=127.0.0.1", True),
        ("tcp:9000:interface=127.0.0.1", True),
        ("tcp:9000:interface=127.1.2.3", True),
        ("tcp:9000:interface=localhost", True),
        ("tcp6:9000:interface=\\:\\:1", True),
        ("tcp6:port=9000:interface=\\:\\:ffff\\:127.0.0.1", True),
        ("ssl:9443:interface=127.0.0.1:privateKey=/nonexistent.pem", True),
        ("unix:/run/httprunner.sock:mode=660", True),
        ("tcp:9000", False),
        ("tcp:0", False),
        ("tcp:9000:interface=0.0.0.0", False),
        ("tcp6:9000", False),
        ("tcp6:9000:interface=\\:\\:", False),
        ("tcp:9000:interface=192.168.1.5", False),
        ("ssl:9443:privateKey=/nonexistent.pem", False),
        ("systemd:domain=INET:index=0", False),
    ],
)
def test_is_local_endpoint_table(description, local):
    assert is_local_endpoint(description) is local


@pytest.mark.parametrize("bad", ["", "tcp", "tcp:abc", "tcp:9000:bogus=1"])
def test_is_local_endpoint_rejects_non_endpoints(bad):
    with pytest.raises(ValueError):
        is_local_endpoint(bad)


def test_non_loopback_listener_without_tokens_refuses_to_start():
    with pytest.raises(ConfigError) as info:
        refuse_anonymous_exposure(["tcp:9000:interface=127.0.0.1", "tcp:9001"], has_tokens=False, allow_anonymous=False)
    message = str(info.value)
    assert "tcp:9001" in message and "127.0.0.1" not in message
    assert "--token-file" in message and "--allow-anonymous" in message


@pytest.mark.parametrize(
    "endpoints, has_tokens, allow_anonymous",
    [
        (["tcp:9000:interface=127.0.0.1", "unix:/run/h.sock"], False, False),
        (["tcp:9000"], True, False),
        (["tcp:9000"], False, True),
    ],
)
def test_local_listeners_or_tokens_or_explicit_anonymous_may_start(endpoints, has_tokens, allow_anonymous):
    refuse_anonymous_exposure(endpoints, has_tokens=has_tokens, allow_anonymous=allow_anonymous)


# --------------------------------------------------------------------------
# Delegation and robustness


class Passed(Resource):
    isLeaf = True

    def render(self, request):
        return b"passed"


@pytest_twisted.ensureDeferred
async def test_non_leaf_wrapped_resource_is_traversed_normally(tmp_path):
    root = Resource()
    child = Passed()
    root.putChild(b"jobs", child)
    resource = GuardedResource(
        root,
        tokens=TokenFile(token_file(tmp_path, TOKEN.decode())),
        hosts=HostPolicy.from_listeners(LOOPBACK, [], []),
    )
    code, _, body = await call(resource, headers={"Authorization": b"Bearer " + TOKEN})
    assert (code, body) == (200, b"passed")
    code, _, _ = await call(
        resource, url="http://127.0.0.1:9000/nowhere", headers={"Authorization": b"Bearer " + TOKEN}
    )
    assert code == 404


def render_direct(resource, headers: list[tuple[bytes, bytes]], secure: bool):
    """Render through a real Request whose headers hold arbitrary bytes."""
    channel = DummyChannel()
    if secure:
        channel.transport = DummyChannel.SSL()
    request = server.Request(channel)
    request.method = b"POST"
    request.uri = request.path = b"/jobs"
    request.clientproto = b"HTTP/1.1"
    request.prepath, request.postpath = [], [b"jobs"]
    request.args = {}
    for name, value in headers:
        request.requestHeaders.addRawHeader(name, value)
    request.render(resource)
    return request.code, channel.transport.written.getvalue()


_header_values = st.one_of(
    st.binary(max_size=60),
    st.sampled_from(
        [
            b"localhost:9000",
            b"[::1]",
            b"http://localhost:9000",
            b"null",
            b"Bearer " + TOKEN,
            b"bearer  " + TOKEN + b" ",
            b"[",
            b":",
            b"\xff\xfe",
        ]
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    headers=st.lists(
        st.tuples(st.sampled_from([b"host", b"origin", b"authorization"]), _header_values),
        max_size=4,
    ),
    secure=st.booleans(),
)
def test_arbitrary_header_bytes_give_4xx_or_pass_never_an_exception(tmp_path, headers, secure):
    resource = GuardedResource(
        Passed(),
        tokens=TokenFile(token_file(tmp_path, TOKEN.decode())),
        hosts=HostPolicy.from_listeners(["tcp:9000:interface=127.0.0.1", "tcp:9001"], ["runner.lan"], []),
    )
    with capturedLogs() as events:
        code, written = render_direct(resource, headers, secure)
    assert code in (200, 400, 401, 403)
    assert not any(e.get("log_failure") for e in events)
    assert written.endswith(b"passed") == (code == 200)
