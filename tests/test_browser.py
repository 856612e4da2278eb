"""The dashboard in a real browser: Playwright driving Debian's Chromium.

Every test opens the page in a fresh browser context (a new profile: no
storage, no cache, no cookies) against a real ``twistd -n httprunner`` child
from the ``start_daemon`` fixture, and drives it as a user would.  One
browser is started for the whole module.

The tests skip, saying why, when ``/usr/bin/chromium`` or the ``playwright``
package is missing; with ``HTTPRUNNER_TEST_BROWSER=1`` (set by ``.ci/run``)
a missing piece is a failure instead.  Playwright's own browser download is
never used: it does not work here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Daemon

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REQUIRED = os.environ.get("HTTPRUNNER_TEST_BROWSER") == "1"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
TOKEN = "browser-token-0123456789abcdef"

try:
    from playwright.sync_api import Browser, Page, Request, Route, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None  # type: ignore[assignment]


def missing_piece() -> str | None:
    if sync_playwright is None:
        return "the playwright package is not installed (pip install '.[test]'; never 'playwright install')"
    if not os.access(CHROMIUM, os.X_OK):
        return "no Chromium at %s (apt-get install chromium)" % CHROMIUM
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    missing = missing_piece()
    if missing is not None:
        if REQUIRED:
            pytest.fail("HTTPRUNNER_TEST_BROWSER=1 but %s" % missing)
        pytest.skip("browser tests need Chromium and Playwright: %s" % missing)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


class Tab:
    """A page in a fresh context, with what the console said."""

    def __init__(self, browser: Browser, **context_options: Any) -> None:
        self.context = browser.new_context(**context_options)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append("console: " + m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append("page error: %s" % e))

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def new_tab(browser: Browser) -> Iterator[Callable[..., Tab]]:
    tabs: list[Tab] = []

    def open_tab(**context_options: Any) -> Tab:
        tab = Tab(browser, **context_options)
        tabs.append(tab)
        return tab

    yield open_tab
    for tab in tabs:
        tab.close()


@pytest.fixture
def page(new_tab: Callable[..., Tab]) -> Page:
    return new_tab().page


def sh(daemon: Daemon, script: str, **fields: Any) -> dict[str, Any]:
    """Submit ``sh -c SCRIPT``."""
    return daemon.submit("sh", "-c", script, **fields)


def gate(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A file a job waits for: (path, shell loop that waits for it)."""
    path = tmp_path / name
    return path, "while [ ! -e %s ]; do sleep 0.02; done" % shlex.quote(str(path))


def job_state(daemon: Daemon, job_id: str) -> str:
    status, job = daemon.api("GET", "/" + job_id)
    assert status == 200, job
    return str(job["state"])


def pane(page: Page, stream: str = "stdout") -> Any:
    return page.locator('pre.output[data-stream="%s"]' % stream)


# --------------------------------------------------------------------------
# the jobs view


def test_the_list_shows_a_new_job_within_3_s_and_the_filters_work(
    page: Page, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon()
    page.goto(daemon.url + "/ui/")
    expect(page.locator("table.jobs-table")).to_be_visible()
    alpha = daemon.submit("echo", "alpha")
    # the 2-second refresh: a job submitted elsewhere shows up within 3 s
    expect(page.locator("tr", has_text="echo alpha")).to_be_visible(timeout=3000)
    failing = daemon.submit("false")
    beta = daemon.submit("echo", "Beta", "two words")
    for job in (alpha, failing, beta):
        daemon.wait(job["id"])
    expect(page.locator("tbody tr")).to_have_count(3)
    # newest first, with the short id linking to the job
    expect(page.locator("tbody tr").first).to_contain_text("echo Beta 'two words'")
    expect(page.locator("tbody tr").first.locator("a.job-link")).to_have_attribute("href", "#/job/" + beta["id"])

    # the state filter, with the count of each state
    failed = page.locator('button[data-state="failed"]')
    expect(failed).to_have_text(re.compile(r"failed\s*1"))
    expect(page.locator('button[data-state="succeeded"]')).to_have_text(re.compile(r"succeeded\s*2"))
    failed.click()
    expect(failed).to_have_attribute("aria-pressed", "true")
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody tr")).to_contain_text("false")
    assert "state=failed" in page.url
    page.locator('button[data-state=""]').click()
    expect(page.locator("tbody tr")).to_have_count(3)

    # the text filter: any case, on command and arguments, server-side
    page.locator("#filter").fill("WORDS")
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody tr")).to_contain_text("echo Beta")
    assert "q=WORDS" in page.url
    # the URL is the view: opened elsewhere, it shows the same
    shared = page.url
    other = page.context.new_page()
    other.goto(shared)
    expect(other.locator("#filter")).to_have_value("WORDS")
    expect(other.locator("tbody tr")).to_have_count(1)
    other.goto(daemon.url + "/ui/#/jobs?state=succeeded&q=alpha")
    expect(other.locator("tbody tr")).to_have_count(1)
    expect(other.locator("tbody tr")).to_contain_text("echo alpha")
    expect(other.locator('button[data-state="succeeded"]')).to_have_attribute("aria-pressed", "true")
    page.locator("#filter").fill("no such thing")
    expect(page.locator("p.empty")).to_have_text("No jobs match these filters.")


def test_older_pages_through_the_history_with_the_before_cursor(
    page: Page, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon()
    jobs = [daemon.submit("echo", "job-%d" % n) for n in range(7)]
    for job in jobs:
        daemon.wait(job["id"])
    rows = page.locator("tbody tr")
    page.goto(daemon.url + "/ui/#/jobs?limit=3")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("echo job-6")
    older = page.locator("button.pager-older")
    older.click()
    expect(rows.first).to_contain_text("echo job-3")
    expect(rows).to_have_count(3)
    assert "before=" + jobs[4]["id"] in page.url
    older.click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("echo job-0")
    expect(older).to_be_hidden()  # the oldest page
    page.locator("button.pager-newer").click()
    expect(rows.first).to_contain_text("echo job-3")
    page.locator("button.pager-newest").click()
    expect(rows.first).to_contain_text("echo job-6")
    expect(page.locator("button.pager-newest")).to_be_hidden()


def test_a_running_duration_ticks_and_paused_means_no_requests(
    new_tab: Callable[..., Tab], start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon()
    job = daemon.submit("sleep", "30")
    tab = new_tab()
    page = tab.page
    listings: list[str] = []
    page.on("request", lambda r: listings.append(r.url) if "/jobs?" in r.url else None)
    page.clock.install()
    page.goto(daemon.url + "/ui/")
    duration = page.locator("tr[data-id='%s'] td.col-duration" % job["id"])
    expect(duration).not_to_have_text("\u2014")
    first = duration.inner_text()
    with page.expect_response(lambda r: "/jobs?" in r.url):
        page.clock.run_for(2500)  # one refresh, and the durations tick meanwhile
    expect(duration).not_to_have_text(first)

    page.keyboard.press("p")  # the pause toggle, from the keyboard
    expect(page.locator("#pause")).to_have_attribute("aria-pressed", "true")
    before = len(listings)
    page.clock.run_for(10_000)
    assert len(listings) == before, "a paused page still refreshed"
    with page.expect_request(lambda r: "/jobs?" in r.url):
        page.locator("#pause").click()  # resuming refreshes at once
    expect(page.locator("#pause")).to_have_attribute("aria-pressed", "false")
    daemon.api("DELETE", "/" + job["id"])


# --------------------------------------------------------------------------
# the job view


def test_the_job_view_shows_lines_of_a_running_job_before_it_ends(
    page: Page, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = start_daemon()
    path, wait = gate(tmp_path, "go")
    job = sh(daemon, "echo first line; echo on stderr >&2; %s; echo second line" % wait)
    page.goto(daemon.url + "/ui/#/job/" + job["id"])
    expect(pane(page)).to_have_text("first line\n")
    expect(pane(page, "stderr")).to_have_text("on stderr\n")
    assert job_state(daemon, job["id"]) == "running"
    expect(page.locator(".job-title .state")).to_have_text("running")
    path.touch()
    expect(pane(page)).to_have_text("first line\nsecond line\n")
    expect(page.locator(".job-title .state")).to_have_text("succeeded")
    expect(page.locator(".job-head button.danger")).to_be_hidden()
    # every field of the job is shown
    fields = page.locator("dl.fields").first
    for label in ("Id", "State", "Command", "Arguments", "Exit code", "Pid", "Created", "Started", "Finished"):
        expect(fields.locator("dt", has_text=label).first).to_be_visible()
    expect(fields).to_contain_text(job["id"])
    # the cost fields are an em dash until the daemon reports them
    expect(fields.locator(".field", has_text="CPU time").locator("dd")).to_have_text(
        re.compile(r"^(\u2014|[0-9.]+ s)$")
    )


def test_the_job_view_resumes_after_a_dropped_connection(
    page: Page, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = start_daemon()
    path, wait = gate(tmp_path, "go")
    job = sh(daemon, "echo line one; %s; echo line two" % wait)
    offsets: list[str] = []

    def cut_the_first_two(route: Route, request: Request) -> None:
        offsets.append(re.search(r"offset=(\d+)", request.url).group(1))  # type: ignore[union-attr]
        if len(offsets) == 1:
            # a proxy that cut the stream after the first line (a clean end)
            route.fulfill(status=200, headers={"X-Output-Offset": "0"}, body="line one\n")
        elif len(offsets) == 2:
            route.abort("connectionreset")  # then one that fails outright
        else:
            route.continue_()

    page.route(re.compile(r"/%s/stdout\?follow=1" % job["id"]), cut_the_first_two)
    page.goto(daemon.url + "/ui/#/job/" + job["id"])
    expect(pane(page)).to_have_text("line one\n")
    path.touch()
    expect(pane(page)).to_have_text("line one\nline two\n")
    # resumed at the byte after what it had, each time: nothing twice, nothing lost
    assert offsets[:3] == ["0", "9", "9"], offsets


def test_a_red_ansi_span_is_red_and_no_escape_text_is_visible(page: Page, start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()
    script = (
        r"printf '\033[31mred words\033[0m plain \033[1;4mbold under\033[0m "
        r"\033]0;window title\007\033[2J\033[?25l\033[38;2;0;128;255mtrue\033[m\n'; "
        r"printf 'progress 10%%\rprogress 50%%\rprogress 100%%\n'"
    )
    job = sh(daemon, script)
    daemon.wait(job["id"])
    page.goto(daemon.url + "/ui/#/job/" + job["id"])
    output = pane(page)
    expect(output).to_have_text("red words plain bold under true\nprogress 100%\n")
    red = output.get_by_text("red words", exact=True)
    colour = red.evaluate("e => getComputedStyle(e).color")
    r, g, b = (int(n) for n in re.findall(r"\d+", colour)[:3])
    assert r > 150 and g < 90 and b < 90, colour
    styles = output.get_by_text("bold under", exact=True).evaluate(
        "e => [getComputedStyle(e).fontWeight, getComputedStyle(e).textDecorationLine]"
    )
    assert int(styles[0]) >= 700 and "underline" in styles[1], styles
    assert output.get_by_text("true", exact=True).evaluate("e => getComputedStyle(e).color") == "rgb(0, 128, 255)"
    text = output.inner_text()
    assert "\x1b" not in text and "[31m" not in text and "window title" not in text and "25l" not in text


ANSI_CASES: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = [
    ("plain\n", [("plain\n", {})]),
    ("\x1b[31mred\x1b[0m", [("red", {"fg": 1})]),
    ("\x1b[1;32mbold green\x1b[22mgreen", [("bold green", {"fg": 2, "bold": True}), ("green", {"fg": 2})]),
    ("\x1b[91mbright\x1b[39m x", [("bright", {"fg": 9}), (" x", {})]),
    ("\x1b[44;97mbg\x1b[49mfg", [("bg", {"fg": 15, "bg": 4}), ("fg", {"fg": 15})]),
    ("\x1b[38;5;208mo\x1b[48;5;17mb", [("o", {"fg": 208}), ("b", {"fg": 208, "bg": 17})]),
    ("\x1b[38;2;1;2;3mt\x1b[0m", [("t", {"fg": "#010203"})]),
    ("\x1b[38:2::255:0:16mc\x1b[m", [("c", {"fg": "#ff0010"})]),
    ("\x1b[4mu\x1b[24mn", [("u", {"underline": True}), ("n", {})]),
    ("\x1b[1m\x1b[mreset", [("reset", {})]),
    ("abc\rX", [("Xbc", {})]),
    ("50%\r100%\n", [("100%\n", {})]),
    ("one\r\ntwo", [("one\ntwo", {})]),
    ("long line\r\x1b[Kshort", [("short", {})]),
    ("ab\bc", [("ac", {})]),
    ("a\x1b[2Jb\x1b[?25lc\x1b[Hd", [("abcd", {})]),
    ("a\x1b]0;title\x07b\x1b]8;;http://x\x1b\\c", [("abc", {})]),
    ("a\x1b(Bb\x1b7c\x07d\x00e", [("abcde", {})]),
    ("<b>&amp;</b>", [("<b>&amp;</b>", {})]),
]


def test_the_ansi_renderer_on_known_sequences(page: Page, start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()
    page.goto(daemon.url + "/ui/")
    results = page.evaluate(
        """async (cases) => {
            const { ansiToSpans, AnsiTerminal } = await import("./ansi.js");
            const simple = (spans) => spans.map((s) => [s.text, Object.fromEntries(
                Object.entries(s.style).filter(([k, v]) => k !== "key" && v !== null && v !== false))]);
            const whole = cases.map((text) => simple(ansiToSpans(text)));
            // the same input fed one character at a time gives the same lines
            const split = cases.map((text) => {
                const t = new AnsiTerminal();
                let lines = [];
                for (const c of text) lines = lines.concat(t.write(c));
                lines = lines.concat(t.flush());
                return lines.map((l) => l.map((r) => r.text).join("") + (l.newline ? "\\n" : "")).join("");
            });
            // bytes as the daemon sends them: UTF-8, decoded whole
            const bytes = simple(ansiToSpans(new TextEncoder().encode("\x1b[31m\u00e9t\u00e9\x1b[0m")));
            return { whole, split, bytes };
        }""",
        [text for text, _ in ANSI_CASES],
    )
    assert results["bytes"] == [["\u00e9t\u00e9", {"fg": 1}]]
    for (text, expected), got, split in zip(ANSI_CASES, results["whole"], results["split"], strict=True):
        assert [(t, s) for t, s in got] == [(t, s) for t, s in expected], repr(text)
        assert split == "".join(t for t, _ in expected), repr(text)


def test_html_in_output_and_arguments_is_shown_as_text_and_runs_nothing(
    page: Page, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon()
    image = '<img src=x onerror="window.__pwned = 1">'
    script = "<script>window.__pwned = 2</script>"
    job = daemon.submit("printf", "%s\\n%s\\n", image, script)
    daemon.wait(job["id"])
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(daemon.url + "/ui/")
    row = page.locator("tbody tr").first
    expect(row).to_contain_text(image)
    page.goto(daemon.url + "/ui/#/job/" + job["id"])
    expect(pane(page)).to_have_text(image + "\n" + script + "\n")
    expect(page.locator(".job-title")).to_contain_text(image)
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("#main script").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert not [url for url in requests if url.endswith("/x")]


def test_cancel_asks_first_and_ends_a_running_job(page: Page, start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()
    job = daemon.submit("sleep", "60")
    page.goto(daemon.url + "/ui/#/job/" + job["id"])
    cancel = page.locator(".job-head button.danger")
    expect(cancel).to_be_visible()
    cancel.click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    # the safe choice has the focus: Enter or Escape keeps the job
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert job_state(daemon, job["id"]) == "running"
    cancel.click()
    dialog.locator("#confirm-yes").click()
    expect(page.locator(".job-title .state")).to_have_text("canceled")
    assert job_state(daemon, job["id"]) == "canceled"
    expect(cancel).to_be_hidden()


def test_the_curl_command_resubmits_the_same_job(page: Page, start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()
    job = daemon.submit("echo", "it's", "two words", timeout=30)
    daemon.wait(job["id"])
    page.goto(daemon.url + "/ui/#/job/" + job["id"])
    command = page.locator("textarea.curl")
    expect(command).to_have_value(re.compile("^curl "))
    words = shlex.split(command.input_value())
    body = json.loads(words[words.index("-d") + 1])
    assert body == {"command": "echo", "args": ["it's", "two words"], "timeout": 30}
    assert words[-1] == daemon.url + "/"


def test_the_callback_delivery_record_is_shown(page: Page, start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon("--callback-attempts", "1")
    # nothing listens on port 9: the delivery fails, and says so
    job = daemon.submit("true", callback="http://127.0.0.1:9/done")
    daemon.wait(job["id"])
    page.goto(daemon.url + "/ui/#/job/" + job["id"])
    record = page.locator("section.callback")
    expect(record).to_contain_text("http://127.0.0.1:9/done")
    expect(record.locator(".field", has_text="Delivery").locator("dd")).to_have_text(
        re.compile("pending|failed|delivered|refused")
    )


def test_a_5_mb_output_keeps_the_page_responsive_and_shows_the_notice(
    page: Page, start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    # --max-output over 5 MB: the daemon keeps it all, the page must not
    daemon = start_daemon("--max-output", "16M")
    path, wait = gate(tmp_path, "go")
    line = r"\033[32mok\033[0m %s" % ("x" * 90)
    job = sh(daemon, "%s; yes \"$(printf '%s')\" | head -c 5000000; echo; echo the last line" % (wait, line))
    page.goto(daemon.url + "/ui/#/job/" + job["id"])
    expect(page.locator(".job-title .state")).to_have_text("running")
    # The browser measures how long each click waits before its handler runs
    # (Event Timing): the page must keep answering input while output pours in.
    page.evaluate(
        """() => {
            window.__inputDelays = [];
            new PerformanceObserver((list) => {
                for (const e of list.getEntries()) window.__inputDelays.push(e.processingStart - e.startTime);
            }).observe({ type: "event", buffered: true, durationThreshold: 16 });
            window.__clicks = 0;
            document.getElementById("pause").addEventListener("click", () => { window.__clicks += 1; });
        }"""
    )
    path.touch()
    clicks = 0
    last_line = page.locator(".pane-stdout .line", has_text="the last line")
    while last_line.count() == 0 and clicks < 200:
        page.locator("#pause").click()
        clicks += 1
    expect(last_line).to_have_count(1)
    assert page.evaluate("window.__clicks") == clicks >= 1
    delays = page.evaluate("window.__inputDelays")
    assert max(delays, default=0) < 1000, "the page answered an input event after %.0f ms" % max(delays)
    notice = page.locator(".pane-stdout .notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("last ~1 MiB")
    expect(notice.locator("a")).to_have_attribute("href", daemon.url + "/" + job["id"] + "/stdout")
    kept = len(pane(page).inner_text())
    assert kept <= 1024 * 1024 + 16384, kept
    assert page.locator(".pane-stdout span.fg-2").count() > 1000


# --------------------------------------------------------------------------
# tokens, headers, console


def test_the_token_is_asked_once_kept_in_the_tab_and_a_wrong_one_is_refused(
    new_tab: Callable[..., Tab], start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    tokens.chmod(0o600)
    daemon = start_daemon("--token-file", str(tokens))
    status, job = daemon.api("POST", "/", {"command": "echo", "args": "secret stuff"}, token=TOKEN)
    assert status == 202
    tab = new_tab()
    page = tab.page
    sent: list[str | None] = []
    page.on("request", lambda r: sent.append(r.headers.get("authorization")) if "/stats" in r.url else None)
    response = page.goto(daemon.url + "/ui/")
    assert response is not None and response.status == 200  # the page itself needs no token
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#token-message")).to_contain_text("needs an API token")
    # declined: the page stops asking at every refresh, and says how to give one
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    with page.expect_request(lambda r: "/stats" in r.url):
        pass  # the next 2-second refresh
    expect(dialog).to_be_hidden()
    expect(page.locator("#status")).to_contain_text("no API token")
    page.locator("#enter-token").click()
    expect(dialog).to_be_visible()
    page.locator("#token-input").fill("wrong-token-0123456789")
    page.locator("#token-input").press("Enter")
    expect(page.locator("#token-message")).to_contain_text("refused this token")
    expect(page.locator("tbody tr")).to_have_count(0)
    page.locator("#token-input").fill(TOKEN)
    page.locator("#token-dialog button[type=submit]").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("tbody tr")).to_contain_text("echo secret stuff")
    assert "Bearer " + TOKEN in sent
    assert page.evaluate("sessionStorage.getItem('httprunner.token')") == TOKEN
    assert tab.context.cookies() == []
    # the live output is fetched with the token as well
    page.locator("a.command-link").first.click()
    expect(pane(page)).to_have_text("secret stuff\n")
    # a reload keeps it (this tab), a new profile asks again
    page.reload()
    expect(pane(page)).to_have_text("secret stuff\n")
    expect(dialog).to_be_hidden()
    fresh = new_tab().page
    fresh.goto(daemon.url + "/ui/")
    expect(fresh.locator("#token-dialog")).to_be_visible()


def test_no_console_errors_and_the_csp_is_enforced(
    new_tab: Callable[..., Tab], start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon()
    job = sh(daemon, r"printf '\033[35mmagenta\033[0m\n'; echo err >&2; exit 3")
    daemon.wait(job["id"])
    tab = new_tab()
    page = tab.page
    response = page.goto(daemon.url + "/ui/")
    assert response is not None
    assert response.headers["content-security-policy"] == CSP
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    expect(page.locator("tbody tr")).to_have_count(1)
    page.goto(daemon.url + "/ui/#/overview")
    expect(page.locator("svg.chart rect.bar-failed")).to_have_count(1)
    page.goto(daemon.url + "/ui/#/job/" + job["id"])
    expect(pane(page)).to_have_text("magenta\n")
    expect(pane(page, "stderr")).to_have_text("err\n")
    assert tab.errors == []
    # the policy is enforced, not only sent: an injected inline script does not run
    page.evaluate(
        """() => {
            const s = document.createElement("script");
            s.textContent = "window.__inline = 1";
            document.body.append(s);
        }"""
    )
    assert page.evaluate("window.__inline") is None


# --------------------------------------------------------------------------
# overview, cluster, keyboard, phone, dark


def test_the_overview_charts_finished_jobs_and_shows_nodes_only_in_a_cluster(
    page: Page, start_daemon: Callable[..., Daemon]
) -> None:
    daemon = start_daemon()
    for job in [daemon.submit("true"), daemon.submit("true"), daemon.submit("false")]:
        daemon.wait(job["id"])
    page.goto(daemon.url + "/ui/#/overview")
    chart = page.locator("svg.chart")
    expect(chart.locator("rect.bar-succeeded")).to_have_count(1)
    expect(chart.locator("rect.bar-failed")).to_have_count(1)
    expect(chart.locator("g.minute")).to_have_count(60)
    title = chart.locator("g.minute").last.locator("title")
    expect(title).to_have_text(re.compile(r"2 succeeded, 1 failed$"))
    expect(page.locator(".card-running .value")).to_have_text("0")
    expect(page.locator("section.nodes")).to_be_hidden()
    page.goto(daemon.url + "/ui/")
    expect(page.locator("th.col-node")).to_have_count(0)

    # in a cluster (/stats names nodes): the nodes table and the node column
    def clustered(route: Route) -> None:
        stats = json.loads(route.fetch().text())
        stats["nodes"] = [
            {"name": "node-a", "last_heartbeat": stats["now"], "alive": True, "running": 2},
            {"name": "node-b", "last_heartbeat": None, "alive": False, "running": 0},
        ]
        route.fulfill(json=stats)

    page.route(re.compile(r"/stats$"), clustered)
    page.goto(daemon.url + "/ui/#/overview")
    expect(page.locator("table.nodes-table tbody tr")).to_have_count(2)
    expect(page.locator("table.nodes-table")).to_contain_text("node-a")
    expect(page.locator("table.nodes-table")).to_contain_text("not answering")
    page.goto(daemon.url + "/ui/")
    expect(page.locator("th.col-node")).to_have_count(1)
    expect(page.locator("td.col-node").first).to_have_text("\u2014")


def test_keyboard_phone_and_dark(new_tab: Callable[..., Tab], start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()
    job = daemon.submit("echo", "keyboard")
    daemon.wait(job["id"])
    page = new_tab(viewport={"width": 390, "height": 740}, color_scheme="dark", has_touch=True).page
    page.goto(daemon.url + "/ui/")
    expect(page.locator("tbody tr")).to_have_count(1)
    # readable on a phone: nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    # dark by prefers-color-scheme
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert sum(int(n) for n in re.findall(r"\d+", background)[:3]) < 120, background
    # the keyboard: "/" to the filter, Tab on to the job, Enter opens it
    page.keyboard.press("/")
    expect(page.locator("#filter")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("a.command-link")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile("#/job/" + job["id"]))
    expect(pane(page)).to_have_text("keyboard\n")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.keyboard.press("o")
    expect(page.locator("svg.chart")).to_be_visible()
