"""The dashboard's static files under /ui/: headers, no token, nothing else reachable.

Against a real daemon with ``--token-file``: the files need no token, the
data routes still do, and every answer under /ui carries the strict headers
of DESIGN §11.  (What the page does is tested in a browser: test_browser.py.)
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from httprunner import web

from .conftest import Daemon

TOKEN = "dashboard-token-0123456789abcdef"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
EXPECTED_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "ansi.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "jobs.js": "text/javascript; charset=utf-8",
    "job.js": "text/javascript; charset=utf-8",
    "overview.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


@pytest.fixture
def guarded(start_daemon: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    tokens.chmod(0o600)
    return start_daemon("--token-file", str(tokens))


def raw(daemon: Daemon, method: str, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """One request sent as written (no redirect following, no path clean-up).

    The body is kept as ``response.body``.
    """
    connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    connection.close()
    return response


def assert_strict(headers: http.client.HTTPMessage | dict[str, str]) -> None:
    assert headers["Content-Security-Policy"] == CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


def test_the_package_holds_the_page_and_nothing_but_known_types() -> None:
    assert set(EXPECTED_TYPES) <= set(web.FILES)
    for name in web.FILES:
        assert name.rpartition(".")[2] in ("html", "css", "js", "svg"), name
    # no inline script or style for the CSP to refuse
    page = web.FILES["index.html"].body.decode()
    assert "<script>" not in page and "style=" not in page and "<style" not in page
    assert '<script type="module" src="app.js"></script>' in page


def test_every_file_is_served_without_a_token_with_strict_headers(guarded: Daemon) -> None:
    for name, content_type in EXPECTED_TYPES.items():
        status, headers, body = guarded.request("GET", "/ui/" + name)
        assert status == 200, name
        assert headers["Content-Type"] == content_type, name
        assert body == web.FILES[name].body
        assert_strict(headers)
    status, headers, body = guarded.request("GET", "/ui/")
    assert (status, headers["Content-Type"], body) == (200, EXPECTED_TYPES["index.html"], web.FILES["index.html"].body)
    assert_strict(headers)


def test_the_data_routes_still_need_the_token(guarded: Daemon) -> None:
    for path in ("/jobs", "/stats", "/jobs?q=x", "/" + "a" * 40):
        status, headers, _ = guarded.request("GET", path)
        assert status == 401, path
    status, stats = guarded.api("GET", "/stats", token=TOKEN)
    assert status == 200 and stats["running"] == 0


def test_an_unknown_file_is_401_with_tokens_and_a_json_404_without(
    guarded: Daemon, start_daemon: Callable[..., Daemon]
) -> None:
    # with tokens, the guard answers before routing: nothing about the routes leaks
    status, headers, _ = guarded.request("GET", "/ui/secret.js")
    assert status == 401
    assert_strict(headers)  # a refusal under /ui carries the headers too
    open_daemon = start_daemon()
    status, headers, body = open_daemon.request("GET", "/ui/secret.js")
    assert status == 404 and set(json.loads(body)) == {"message", "error"}
    assert headers["Content-Type"] == "application/json"
    assert_strict(headers)


UNSERVED = [
    "/ui/../jobs",
    "/ui/..%2Fjobs",
    "/ui/%2e%2e/jobs",
    "/ui/..%2F..%2Fetc%2Fpasswd",
    "/ui//etc/passwd",
    "/ui/app.js/../../jobs",
    "/ui/web/__init__.py",
    "/ui/__init__.py",
    "/ui/.",
]


def test_no_path_under_ui_reaches_a_file_or_a_data_route(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()
    daemon.submit("echo", "private-words")
    for path in UNSERVED:
        response = raw(daemon, "GET", path)
        # 404, or werkzeug's 308 for a doubled slash (an error body, no Location)
        assert response.status in (404, 308), (path, response.status)
        assert set(json.loads(response.body)) == {"message", "error"}  # type: ignore[attr-defined]
        assert b"private-words" not in response.body and b"root:" not in response.body  # type: ignore[attr-defined]


def test_ui_without_slash_redirects_relatively(guarded: Daemon) -> None:
    response = raw(guarded, "GET", "/ui")
    assert response.status == 301 and response.headers["Location"] == "ui/"
    assert_strict(response.headers)


def test_host_and_origin_are_still_checked_on_the_files(guarded: Daemon) -> None:
    refused = raw(guarded, "GET", "/ui/", {"Host": "evil.example"})
    assert refused.status == 400
    assert_strict(refused.headers)
    refused = raw(guarded, "GET", "/ui/app.js", {"Origin": "http://evil.example"})
    assert refused.status == 403
    assert_strict(refused.headers)
    own = "http://127.0.0.1:%d" % guarded.port
    assert raw(guarded, "GET", "/ui/app.js", {"Origin": own}).status == 200


def test_a_revalidation_is_a_304(guarded: Daemon) -> None:
    first = raw(guarded, "GET", "/ui/app.js")
    assert first.headers["Cache-Control"] == "no-cache"
    etag = first.headers["ETag"]
    again = raw(guarded, "GET", "/ui/app.js", {"If-None-Match": etag})
    assert again.status == 304
    assert raw(guarded, "GET", "/ui/app.js", {"If-None-Match": '"other"'}).status == 200


def test_the_startup_log_points_to_the_dashboard(guarded: Daemon) -> None:
    assert "the dashboard is at /ui/" in guarded.log_text()
