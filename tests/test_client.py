"""Unit tests of ``httprunner.client`` against a small fake daemon.

The fake (``FakeDaemon``) is an ``http.server`` on 127.0.0.1, port 0, in a
thread: it speaks just the part of DESIGN.md section 2 the client uses,
and can be told to fail requests, to drop a follow stream at given byte
positions, and to answer with a different ``X-Output-Offset`` than asked,
so the client's error mapping and its resume logic are tested for real
over sockets, without the daemon or real jobs.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from httprunner import client

from .conftest import as_from_a_terminal

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0


# -- the fake daemon ---------------------------------------------------------


class FakeJob:
    def __init__(self, payload: dict[str, Any]) -> None:
        self.id = secrets.token_hex(20)
        self.payload = payload
        self.streams = {"stdout": bytearray(), "stderr": bytearray()}
        self.code: int | None = None
        self.state = "running"
        self.err: dict[str, str] | None = None
        #: per stream, a (start, end) range of bytes the fake claims it dropped
        self.gaps: dict[str, tuple[int, int]] = {}
        #: per stream, serve from this many bytes *before* the asked offset
        self.rewind: dict[str, int] = {}

    def view(self) -> dict[str, Any]:
        return {
            "stderr": self.streams["stderr"].decode("utf-8", "replace"),
            "stdout": self.streams["stdout"].decode("utf-8", "replace"),
            "id": self.id,
            "code": self.code,
            "command": self.payload.get("command"),
            "arguments": self.payload.get("args") or [],
            "err": self.err,
            "state": self.state,
            "signal": None,
            "pid": 4242,
            "created_at": "2026-11-27T21:00:00.123Z",
            "started_at": "2026-11-27T21:00:00.125Z",
            "finished_at": None if self.code is None else "2026-11-27T21:00:01.000Z",
            "duration": None if self.code is None else 0.875,
            "timeout": self.payload.get("timeout"),
            "stdout_bytes": len(self.streams["stdout"]),
            "stderr_bytes": len(self.streams["stderr"]),
            "stdout_dropped": 0,
            "stderr_dropped": 0,
        }


class FakeDaemon:
    """The fake server's state; every handler thread shares it under ``cond``."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.jobs: dict[str, FakeJob] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        #: (method, route kind) -> (status, body, headers), answered instead of the route
        self.failures: dict[tuple[str, str], tuple[int, bytes, dict[str, str]]] = {}
        #: (method, route kind) -> how many more times its failure is answered (absent: always)
        self.failure_counts: dict[tuple[str, str], int] = {}
        #: stream name -> byte positions where a follow response is cut (each once)
        self.breaks: dict[str, list[int]] = {"stdout": [], "stderr": []}
        #: cut mid-chunk (a chunk header promising more than is sent) instead of between chunks
        self.break_mid_chunk = False
        self.chunk_size = 1000
        #: called in a thread with each new job; the default finishes "echo" jobs
        self.script: Callable[[FakeJob, FakeDaemon], None] = echo_script
        self.cancels: list[str] = []
        #: the most jobs one page of GET /jobs holds (the real server: 1000)
        self.page_cap = 1000
        self.http: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.http is not None
        return f"http://127.0.0.1:{self.http.server_address[1]}"

    def emit(self, job: FakeJob, stream: str, data: bytes) -> None:
        with self.cond:
            job.streams[stream] += data
            self.cond.notify_all()

    def finish(self, job: FakeJob, code: int, state: str | None = None, err: dict[str, str] | None = None) -> None:
        with self.cond:
            if job.code is None:
                job.code = code
                job.state = state or ("succeeded" if code == 0 else "failed")
                job.err = err
            self.cond.notify_all()

    def offsets_asked(self, stream: str) -> list[int]:
        found = []
        for method, target, _ in self.requests:
            parts = urllib.parse.urlsplit(target)
            if method == "GET" and parts.path.endswith("/" + stream):
                found.append(int(urllib.parse.parse_qs(parts.query).get("offset", ["0"])[0]))
        return found


def echo_script(job: FakeJob, daemon: FakeDaemon) -> None:
    if job.payload.get("command") == "echo":
        daemon.emit(job, "stdout", (" ".join(job.payload.get("args") or []) + "\n").encode())
        daemon.finish(job, 0)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    daemon: FakeDaemon  # set on a subclass per fake

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(body).encode()
        self._raw(status, raw, headers)

    def _raw(self, status: int, raw: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def _route(self) -> tuple[str, FakeJob | None, str, dict[str, list[str]]]:
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parts.query)
        segments = [s for s in parts.path.split("/") if s]
        if not segments:
            return "root", None, "", query
        if segments == ["jobs"]:
            return "jobs", None, "", query
        job = self.daemon.jobs.get(segments[0])
        if len(segments) == 2 and segments[1] in ("stdout", "stderr"):
            return "output", job, segments[1], query
        return "job", job, "", query

    def _failure(self, kind: str) -> bool:
        key = (self.command, kind)
        with self.daemon.cond:
            failure = self.daemon.failures.get(key)
            if failure is None:
                return False
            left = self.daemon.failure_counts.get(key)
            if left is not None:
                self.daemon.failure_counts[key] = left - 1
                if left <= 1:
                    del self.daemon.failures[key], self.daemon.failure_counts[key]
        status, body, headers = failure
        self._raw(status, body, headers)
        return True

    def _record(self) -> None:
        with self.daemon.cond:
            self.daemon.requests.append((self.command, self.path, dict(self.headers.items())))

    def do_POST(self) -> None:
        self._record()
        length = int(self.headers.get("Content-Length", "0"))
        payload = json.loads(self.rfile.read(length))
        if self._failure("root"):
            return
        job = FakeJob(payload)
        with self.daemon.cond:
            self.daemon.jobs[job.id] = job
        threading.Thread(target=self.daemon.script, args=(job, self.daemon), daemon=True).start()
        self._json(202, job.view(), {"Location": f"/{job.id}"})

    def do_DELETE(self) -> None:
        self._record()
        kind, job, _, _ = self._route()
        if self._failure(kind):
            return
        if job is None:
            self._json(404, {"message": "Not Found", "error": "unknown job (or evicted)"})
            return
        with self.daemon.cond:
            self.daemon.cancels.append(job.id)
            already = job.code is not None
        if not already:
            self.daemon.finish(job, 143, "canceled", {"code": "CANCELED", "message": "canceled"})
        self._json(200 if already else 202, job.view())

    def do_GET(self) -> None:
        self._record()
        kind, job, stream, query = self._route()
        if self._failure(kind):
            return
        if kind == "jobs":
            # newest first, from after ``before``, at most ``limit`` (100) and
            # the page cap; ``next`` when more follow
            jobs = [j.view() for j in reversed(list(self.daemon.jobs.values()))]
            if "before" in query:
                jobs = jobs[[j["id"] for j in jobs].index(query["before"][0]) + 1 :]
            size = min(int(query.get("limit", ["100"])[0]), self.daemon.page_cap)
            page = jobs[:size]
            self._json(200, {"jobs": page, "next": page[-1]["id"] if len(jobs) > size else None})
            return
        if job is None:
            self._json(404, {"message": "Not Found", "error": "unknown job (or evicted)"})
            return
        if kind == "job":
            wait = float(query.get("wait", ["0"])[0])
            with self.daemon.cond:
                self.daemon.cond.wait_for(lambda: job.code is not None, timeout=wait)
                view = job.view()
            self._json(200, view)
            return
        self._output(job, stream, int(query.get("offset", ["0"])[0]), query.get("follow", ["0"])[0] == "1")

    def _output(self, job: FakeJob, stream: str, offset: int, follow: bool) -> None:
        daemon = self.daemon
        start = offset
        gap = job.gaps.get(stream)
        if gap and gap[0] <= start < gap[1]:
            start = gap[1]
        start = max(0, start - job.rewind.pop(stream, 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("X-Output-Offset", str(start))
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        position = start
        while True:
            with daemon.cond:
                daemon.cond.wait_for(
                    lambda position=position: len(job.streams[stream]) > position or job.code is not None or not follow,
                    timeout=TIMEOUT,
                )
                data = bytes(job.streams[stream][position : position + daemon.chunk_size])
                ended = job.code is not None or not follow
                cut = next((b for b in daemon.breaks[stream] if position < b <= position + len(data)), None)
                if cut is not None:
                    daemon.breaks[stream].remove(cut)
            if cut is not None:
                part = data[: cut - position]
                if daemon.break_mid_chunk:
                    self.wfile.write(b"%x\r\n" % len(data) + part)
                else:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if data:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                position += len(data)
                continue
            if ended:
                self.wfile.write(b"0\r\n\r\n")
                return


@pytest.fixture
def fake() -> Any:
    daemon = FakeDaemon()
    handler = type("BoundHandler", (Handler,), {"daemon": daemon})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    daemon.http = server
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield daemon
    with daemon.cond:
        for job in daemon.jobs.values():
            if job.code is None:
                job.code = 0
        daemon.cond.notify_all()
    server.shutdown()
    server.server_close()


class Result:
    def __init__(self, code: int, out: bytes, err: bytes) -> None:
        self.code = code
        self.out = out
        self.err = err
        self.err_text = err.decode("utf-8", "replace")


def cli(daemon: FakeDaemon | None, *argv: str, env: dict[str, str] | None = None, **kw: Any) -> Result:
    """Run the client in-process against the fake; capture its streams."""
    out, err = io.BytesIO(), io.BytesIO()
    environ = dict(env or {})
    if daemon is not None:
        environ.setdefault("HTTPRUNNER_URL", daemon.url)
    kw.setdefault("stdout_tty", False)
    kw.setdefault("stderr_tty", False)
    code = client.run_cli(list(argv), stdout=out, stderr=err, environ=environ, **kw)
    return Result(code, out.getvalue(), err.getvalue())


def one_error_line(result: Result) -> str:
    """The client's stderr is one ``httprunner-client: error: ...`` line, no traceback."""
    assert "Traceback" not in result.err_text
    lines = result.err_text.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("httprunner-client: error: ")
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- argument parsing --------------------------------------------------------


def parse_payload(*argv: str) -> dict[str, Any]:
    return client.build_payload(client.build_parser().parse_args(list(argv)))


def test_run_sends_command_and_arguments_as_json_array_after_double_dash() -> None:
    payload = parse_payload("run", "--", "ffmpeg", "-i", "a b.mp4", "--", "-y")
    assert payload == {"command": "ffmpeg", "args": ["-i", "a b.mp4", "--", "-y"]}


def test_run_without_double_dash_passes_later_options_to_the_command() -> None:
    payload = parse_payload("run", "--timeout", "5", "ls", "--timeout", "9")
    assert payload == {"command": "ls", "args": ["--timeout", "9"], "timeout": 5.0}


def test_run_options_become_request_fields() -> None:
    payload = parse_payload(
        "run", "--timeout", "1.5", "--callback", "http://cb/", "--env", "A=1", "--env", "B=x=y", "--", "env"
    )
    assert payload == {
        "command": "env",
        "args": [],
        "timeout": 1.5,
        "callback": "http://cb/",
        "env": {"A": "1", "B": "x=y"},
    }


def test_stdin_file_is_sent_as_text(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_text("héllo\n", encoding="utf-8")
    assert parse_payload("run", "--stdin-file", str(path), "--", "cat")["stdin"] == "héllo\n"


@pytest.mark.parametrize(
    "argv, complaint",
    [
        (["run"], "no command given"),
        (["run", "--"], "no command given"),
        (["run", "--timeout", "0", "--", "true"], "--timeout"),
        (["run", "--timeout", "abc", "--", "true"], "--timeout"),
        (["run", "--env", "NOEQUALS", "--", "true"], "NAME=VALUE"),
        (["run", "--env", "=v", "--", "true"], "NAME=VALUE"),
        (["run", "--", "echo", "\udcff"], "not UTF-8"),
        (["status", "not-an-id"], "not a job id"),
        (["status", "../" + "a" * 37], "not a job id"),
        (["list", "--limit", "0"], "--limit"),
        (["frobnicate"], "invalid choice"),
        ([], "no command given"),
        (["--url", "ftp://x", "list"], "--url"),
        (["--url", "http://user:pw@host/", "list"], "credentials"),
        (["--url", "http://host:99999/", "list"], "port"),
    ],
)
def test_usage_errors_are_one_line_with_exit_200(argv: list[str], complaint: str) -> None:
    result = cli(None, *argv)
    assert result.code == client.EXIT_USAGE == 200
    assert complaint in one_error_line(result)


def test_unreadable_and_binary_stdin_files_are_usage_errors(tmp_path: Path) -> None:
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00")
    result = cli(None, "run", "--stdin-file", str(binary), "--", "cat")
    assert result.code == 200 and "not UTF-8" in one_error_line(result)
    result = cli(None, "run", "--stdin-file", str(tmp_path / "missing"), "--", "cat")
    assert result.code == 200 and "cannot read" in one_error_line(result)


def test_url_option_works_before_and_after_the_subcommand(fake: FakeDaemon) -> None:
    job = FakeJob({"command": "true"})
    fake.jobs[job.id] = job
    elsewhere = {"HTTPRUNNER_URL": f"http://127.0.0.1:{free_port()}"}
    assert cli(None, "--url", fake.url, "status", "--json", job.id, env=elsewhere).code == 0
    assert cli(None, "status", "--url", fake.url, "--json", job.id, env=elsewhere).code == 0
    assert cli(None, "status", "--json", job.id, env=elsewhere).code == client.EXIT_CONNECTION


def test_token_from_file_beats_environment_and_is_sent_as_bearer(fake: FakeDaemon, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# comment\n\n  s3cret  \nother\n")
    assert cli(fake, "run", "--", "echo", "x", env={"HTTPRUNNER_TOKEN": "from-env"}).code == 0
    assert fake.requests[0][2]["Authorization"] == "Bearer from-env"
    fake.requests.clear()
    assert cli(fake, "--token-file", str(token_file), "run", "--", "echo", "x", env={"HTTPRUNNER_TOKEN": "e"}).code == 0
    assert {r[2]["Authorization"] for r in fake.requests} == {"Bearer s3cret"}


def test_no_token_sends_no_authorization_header(fake: FakeDaemon) -> None:
    assert cli(fake, "run", "--", "echo", "x").code == 0
    assert all("Authorization" not in headers for _, _, headers in fake.requests)


def test_empty_or_missing_token_file_is_a_usage_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# only a comment\n")
    assert cli(None, "--token-file", str(empty), "list").code == 200
    result = cli(None, "--token-file", str(tmp_path / "nope"), "list")
    assert result.code == 200 and "cannot read --token-file" in one_error_line(result)


def test_url_path_prefix_is_kept(fake: FakeDaemon) -> None:
    # A daemon behind a proxy at /runner/: every request carries the prefix
    # (the fake does not strip it, so it answers 404).
    result = cli(None, "--url", fake.url + "/runner/", "list", "--json")
    assert fake.requests[0][1].startswith("/runner/jobs")
    assert result.code == client.EXIT_NOT_FOUND  # the fake has no such route


# -- error mapping -----------------------------------------------------------


def test_connection_refused_is_one_line_and_exit_201() -> None:
    result = cli(None, "run", "--", "true", env={"HTTPRUNNER_URL": f"http://127.0.0.1:{free_port()}"})
    assert result.code == client.EXIT_CONNECTION == 201
    assert "connection refused" in one_error_line(result)


@pytest.mark.parametrize(
    "status, error, headers, exit_code, shown",
    [
        (
            401,
            "missing or invalid token",
            {"WWW-Authenticate": "Bearer"},
            203,
            "401 Unauthorized: missing or invalid token",
        ),
        (403, "command not allowed: rm", {}, 203, "403 Forbidden: command not allowed: rm"),
        (400, "args must be a string or an array", {}, 202, "400 Bad Request: args must be"),
        (413, "body over 65536 bytes", {}, 202, "413 Request Entity Too Large: body over"),
        (503, "queue full", {"Retry-After": "5"}, 205, "503 Service Unavailable: queue full (retry after 5 s)"),
        (500, "boom", {}, 202, "500 Internal Server Error: boom"),
    ],
)
def test_http_errors_show_the_servers_error_and_map_to_exit_codes(
    fake: FakeDaemon, status: int, error: str, headers: dict[str, str], exit_code: int, shown: str
) -> None:
    body = json.dumps({"message": "x", "error": error}).encode()
    fake.failures[("POST", "root")] = (status, body, headers)
    result = cli(fake, "--no-retry", "run", "--", "true")
    assert result.code == exit_code
    assert shown in one_error_line(result)
    assert result.out == b""


def test_unknown_job_is_exit_204_with_the_servers_message(fake: FakeDaemon) -> None:
    for argv in (["status"], ["wait"], ["logs"], ["cancel"]):
        result = cli(fake, *argv, "ab" * 20)
        assert result.code == client.EXIT_NOT_FOUND == 204
        assert "404 Not Found: unknown job (or evicted)" in one_error_line(result)


def test_non_json_error_body_is_not_dumped(fake: FakeDaemon) -> None:
    fake.failures[("GET", "jobs")] = (502, b"<html><body>Bad gateway\n\nfrom proxy</body></html>", {})
    line = one_error_line(cli(fake, "list"))
    assert line == "httprunner-client: error: 502 Bad Gateway"


def test_401_suggests_how_to_give_a_token(fake: FakeDaemon) -> None:
    fake.failures[("GET", "jobs")] = (401, b'{"message":"Unauthorized","error":"token required"}', {})
    assert "--token-file or HTTPRUNNER_TOKEN" in one_error_line(cli(fake, "list"))


def test_client_exit_codes_cannot_be_job_codes_of_signals_or_shells() -> None:
    codes = {
        client.EXIT_USAGE,
        client.EXIT_CONNECTION,
        client.EXIT_HTTP,
        client.EXIT_AUTH,
        client.EXIT_NOT_FOUND,
        client.EXIT_BUSY,
        client.EXIT_WAIT_TIMEOUT,
        client.EXIT_LOST,
    }
    assert len(codes) == 8
    # 0-2 common, 124-127 timeout/env/shell, 128+n for every Linux signal (n <= 64)
    assert not codes & ({0, 1, 2, 124, 125, 126, 127} | set(range(128, 128 + 65)))
    assert all(code < 256 for code in codes)


# -- run: exit codes and output ----------------------------------------------


def scripted(events: list[tuple[str, bytes]], code: int, state: str | None = None, err: Any = None) -> Callable:
    def script(job: FakeJob, daemon: FakeDaemon) -> None:
        for stream, data in events:
            daemon.emit(job, stream, data)
        daemon.finish(job, code, state, err)

    return script


@pytest.mark.parametrize("code", [0, 3, 143])
def test_run_exits_with_the_jobs_code(fake: FakeDaemon, code: int) -> None:
    fake.script = scripted([("stdout", b"out\n")], code)
    result = cli(fake, "run", "--", "job")
    assert (result.code, result.out) == (code, b"out\n")


def test_run_separates_stdout_and_stderr_and_writes_bytes_raw(fake: FakeDaemon) -> None:
    binary = bytes(range(256)) * 3
    fake.script = scripted([("stdout", b"to out\n"), ("stderr", b"to err\n"), ("stdout", binary)], 0)
    result = cli(fake, "run", "--", "job")
    assert result.out == b"to out\n" + binary
    assert result.err == b"to err\n"


def test_run_reports_an_abnormal_end_on_one_stderr_line(fake: FakeDaemon) -> None:
    fake.script = scripted([], 127, "spawn_failed", {"code": "ENOENT", "message": "no such program: nope"})
    result = cli(fake, "run", "--", "nope")
    assert result.code == 127
    assert result.err_text.endswith("spawn_failed: no such program: nope\n")


def test_run_streams_output_while_the_job_runs(fake: FakeDaemon) -> None:
    seen_first = threading.Event()

    class Watching(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            written = super().write(data)
            if b"first" in self.getvalue():
                seen_first.set()
            return written

    def script(job: FakeJob, daemon: FakeDaemon) -> None:
        daemon.emit(job, "stdout", b"first\n")
        # The job only goes on once the client has shown "first": a client
        # that buffered until the end would make this wait fail.
        streamed = seen_first.wait(TIMEOUT)
        daemon.emit(job, "stdout", b"second\n" if streamed else b"not streamed\n")
        daemon.finish(job, 0)

    fake.script = script
    out, err = Watching(), io.BytesIO()
    code = client.run_cli(["run", "--", "job"], stdout=out, stderr=err, environ={"HTTPRUNNER_URL": fake.url})
    assert (code, out.getvalue()) == (0, b"first\nsecond\n")


def test_run_waits_for_the_code_after_the_streams_end(fake: FakeDaemon) -> None:
    # Streams end (the fake closes them cleanly) before the job has a code:
    # the client must keep asking instead of exiting 0.
    def script(job: FakeJob, daemon: FakeDaemon) -> None:
        daemon.emit(job, "stdout", b"done\n")
        time.sleep(0.3)
        daemon.finish(job, 5)

    fake.script = script
    result = cli(fake, "run", "--", "job")
    assert (result.code, result.out) == (5, b"done\n")
    assert any("wait=" in target for method, target, _ in fake.requests if method == "GET")


# -- run: resuming a broken follow stream ------------------------------------


def big(n: int, seed: int) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(n))


@pytest.mark.parametrize("mid_chunk", [False, True], ids=["between-chunks", "mid-chunk"])
def test_broken_follow_stream_resumes_at_the_written_offset(fake: FakeDaemon, mid_chunk: bool) -> None:
    out_data, err_data = big(10_000, 1), big(5_000, 2)
    fake.script = scripted([("stdout", out_data), ("stderr", err_data)], 0)
    fake.break_mid_chunk = mid_chunk
    fake.breaks = {"stdout": [2_500, 7_001], "stderr": [1_234]}
    result = cli(fake, "run", "--", "job")
    assert result.code == 0
    assert result.out == out_data  # nothing lost, nothing duplicated
    assert result.err == err_data
    assert fake.offsets_asked("stdout")[:3] == [0, 2_500, 7_001]
    assert fake.offsets_asked("stderr")[:2] == [0, 1_234]
    assert fake.breaks == {"stdout": [], "stderr": []}


def test_resume_skips_bytes_the_server_sends_again(fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    data = big(6_000, 3)

    fake.script = scripted([("stdout", data)], 0)
    fake.breaks["stdout"] = [3_000]

    # After the break the fake answers from 500 bytes before the asked offset
    # (and says so in X-Output-Offset): the client must not write them twice.
    original = Handler._output

    def rewinding(self: Handler, job: FakeJob, stream: str, offset: int, follow: bool) -> None:
        if offset:
            job.rewind[stream] = 500
        original(self, job, stream, offset, follow)

    monkeypatch.setattr(Handler, "_output", rewinding)
    result = cli(fake, "run", "--", "job")
    assert result.out == data
    assert fake.offsets_asked("stdout")[:2] == [0, 3_000]


def test_resume_into_a_dropped_gap_continues_after_it_and_says_so(fake: FakeDaemon) -> None:
    data = big(9_000, 4)

    def script(job: FakeJob, daemon: FakeDaemon) -> None:
        job.gaps["stdout"] = (2_000, 6_000)  # retained: head [0, 2000) and tail [6000, 9000)
        daemon.emit(job, "stdout", data)
        daemon.finish(job, 0)

    fake.script = script
    fake.breaks["stdout"] = [2_000]
    result = cli(fake, "run", "--", "job")
    assert result.code == 0
    assert result.out == data[:2_000] + data[6_000:]
    assert "4000 bytes of the job's stdout are no longer retained" in result.err_text


def test_run_gives_up_when_the_server_is_gone_and_names_the_job(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "RECONNECT_FOR", 0.5)

    def script(job: FakeJob, daemon: FakeDaemon) -> None:
        daemon.emit(job, "stdout", b"partial\n")

    fake.script = script
    fake.breaks["stdout"] = [8]

    # Stop the whole fake as soon as the first stream broke.
    original = Handler._output

    def break_then_die(self: Handler, job: FakeJob, stream: str, offset: int, follow: bool) -> None:
        if offset:
            threading.Thread(target=fake.http.shutdown, daemon=True).start()  # type: ignore[union-attr]
            fake.http.socket.close()  # type: ignore[union-attr]
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        original(self, job, stream, offset, follow)

    monkeypatch.setattr(Handler, "_output", break_then_die)
    result = cli(fake, "run", "--", "job")
    assert result.code == client.EXIT_CONNECTION
    assert result.out == b"partial\n"
    job_id = next(iter(fake.jobs))
    assert f"httprunner-client wait {job_id}" in result.err_text
    assert "Traceback" not in result.err_text


# -- the other commands ------------------------------------------------------


def finished_job(fake: FakeDaemon, code: int = 0, out: bytes = b"", err: bytes = b"") -> FakeJob:
    job = FakeJob({"command": "prog", "args": ["a", "b c"]})
    job.streams["stdout"] += out
    job.streams["stderr"] += err
    job.code, job.state = code, ("succeeded" if code == 0 else "failed")
    fake.jobs[job.id] = job
    return job


def test_submit_prints_only_the_id(fake: FakeDaemon) -> None:
    result = cli(fake, "submit", "--", "echo", "hi")
    assert result.code == 0
    assert re.fullmatch(rb"[0-9a-f]{40}\n", result.out)
    assert result.out.decode().strip() in fake.jobs


def test_status_prints_json_when_piped_and_a_summary_on_request(fake: FakeDaemon) -> None:
    job = finished_job(fake, 3, b"x")
    piped = cli(fake, "status", job.id)
    assert json.loads(piped.out)["code"] == 3
    summary = cli(fake, "status", "--summary", job.id).out.decode()
    assert f"id:       {job.id}\n" in summary
    assert "state:    failed (code 3)\n" in summary
    assert "command:  prog a 'b c'\n" in summary
    on_tty = cli(fake, "status", job.id, stdout_tty=True).out.decode()
    assert on_tty == summary
    assert json.loads(cli(fake, "status", "--json", job.id, stdout_tty=True).out)["id"] == job.id


def test_wait_long_polls_and_exits_with_the_code(fake: FakeDaemon) -> None:
    job = FakeJob({"command": "slow"})
    fake.jobs[job.id] = job
    threading.Timer(0.3, fake.finish, (job, 7)).start()
    result = cli(fake, "wait", job.id)
    assert result.code == 7
    assert any(target.endswith("?wait=30") for _, target, _ in fake.requests)


def test_a_lost_job_exits_207_from_run_and_wait(fake: FakeDaemon) -> None:
    # A durable store's job that was running when its daemon died: code -1,
    # which no exit status can carry.
    lost = {"code": "LOST", "message": "the daemon stopped while the job was running"}
    fake.script = scripted([("stdout", b"half\n")], -1, "lost", lost)
    result = cli(fake, "run", "--", "job")
    assert (result.code, result.out) == (client.EXIT_LOST, b"half\n") and client.EXIT_LOST == 207
    job = FakeJob({"command": "slow"})
    fake.jobs[job.id] = job
    threading.Timer(0.3, fake.finish, (job, -1, "lost", lost)).start()
    assert cli(fake, "wait", job.id).code == 207


def test_wait_timeout_exits_206_and_leaves_the_job_alone(fake: FakeDaemon) -> None:
    job = FakeJob({"command": "slow"})
    fake.jobs[job.id] = job
    result = cli(fake, "wait", "--timeout", "0.3", job.id)
    assert result.code == client.EXIT_WAIT_TIMEOUT == 206
    assert "still running" in one_error_line(result)
    assert fake.cancels == []


def test_logs_prints_stdout_or_stderr_on_stdout(fake: FakeDaemon) -> None:
    job = finished_job(fake, 0, b"the out\n", b"the err\n")
    assert cli(fake, "logs", job.id).out == b"the out\n"
    assert cli(fake, "logs", "--stderr", job.id).out == b"the err\n"
    assert fake.offsets_asked("stdout") == [0]
    assert all("follow" not in target for _, target, _ in fake.requests)


def test_logs_follow_streams_until_the_job_ends_and_resumes(fake: FakeDaemon) -> None:
    job = FakeJob({"command": "slow"})
    fake.jobs[job.id] = job
    data = big(4_000, 5)

    def produce() -> None:
        fake.emit(job, "stdout", data[:1_500])
        time.sleep(0.2)
        fake.emit(job, "stdout", data[1_500:])
        fake.finish(job, 1)

    fake.breaks["stdout"] = [1_000]
    threading.Thread(target=produce, daemon=True).start()
    result = cli(fake, "logs", "-f", job.id)
    assert (result.code, result.out) == (0, data)
    assert fake.offsets_asked("stdout")[:2] == [0, 1_000]


def test_cancel_sends_delete(fake: FakeDaemon) -> None:
    job = FakeJob({"command": "slow"})
    fake.jobs[job.id] = job
    result = cli(fake, "cancel", job.id)
    assert (result.code, result.out, result.err) == (0, b"", b"")
    assert fake.cancels == [job.id] and job.state == "canceled"
    again = cli(fake, "cancel", job.id)
    assert again.code == 0 and "already ended (canceled)" in again.err_text


def test_list_passes_filters_and_prints_json_or_a_table(fake: FakeDaemon) -> None:
    first, second = finished_job(fake, 0), finished_job(fake, 2)
    result = cli(fake, "list", "--state", "failed", "--limit", "5")
    assert result.code == 0
    assert json.loads(result.out) == {"jobs": [second.view(), first.view()], "next": None}
    assert fake.requests[-1][1] == "/jobs?state=failed&limit=5"
    table = cli(fake, "list", "--summary").out.decode().splitlines()
    assert table[0].split() == ["ID", "STATE", "CODE", "CREATED", "COMMAND"]
    assert table[1].split()[:3] == [second.id, "failed", "2"]
    assert table[1].endswith("prog a 'b c'")


def test_list_follows_the_next_cursor_page_after_page(fake: FakeDaemon) -> None:
    made = [finished_job(fake, 0) for _ in range(7)]
    newest_first = [j.id for j in reversed(made)]
    fake.page_cap = 2  # a server whose pages are smaller than asked
    result = cli(fake, "list", "--limit", "5")
    listed = json.loads(result.out)
    assert [j["id"] for j in listed["jobs"]] == newest_first[:5] and listed["next"] == newest_first[4]
    asked = [path for _, path, _ in fake.requests if path.startswith("/jobs")]
    assert asked == [
        "/jobs?limit=5",
        "/jobs?limit=3&before=" + newest_first[1],
        "/jobs?limit=1&before=" + newest_first[3],
    ]
    rest = json.loads(cli(fake, "list", "--all", "--before", listed["next"]).out)
    assert [j["id"] for j in rest["jobs"]] == newest_first[5:] and rest["next"] is None
    everything = json.loads(cli(fake, "list", "--all").out)
    assert [j["id"] for j in everything["jobs"]] == newest_first


def test_list_without_a_limit_is_one_page_and_says_how_to_go_on(fake: FakeDaemon) -> None:
    made = [finished_job(fake, 0) for _ in range(3)]
    fake.page_cap = 2
    table = cli(fake, "list", "--summary")
    assert [line.split()[0] for line in table.out.decode().splitlines()[1:]] == [made[2].id, made[1].id]
    assert table.err_text == "httprunner-client: more jobs: list --before %s\n" % made[1].id
    assert cli(fake, "list", "--all", "--limit", "3").code == 200  # one or the other


# -- progress line -----------------------------------------------------------


def test_progress_line_on_a_terminal_is_cleared_before_output(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "PROGRESS_IDLE", 0.05)
    monkeypatch.setattr(client, "PROGRESS_TICK", 0.05)

    def script(job: FakeJob, daemon: FakeDaemon) -> None:
        time.sleep(0.5)
        daemon.emit(job, "stderr", b"late\n")
        daemon.finish(job, 0)

    fake.script = script
    result = cli(fake, "run", "--", "quiet", stderr_tty=True)
    assert result.code == 0
    progress = re.search(rb"\r\[httprunner-client\] job [0-9a-f]{12} (queued|running) 0:00\x1b\[K", result.err)
    assert progress, result.err
    # Every progress line is wiped before the job's bytes appear.
    assert result.err.endswith(b"\r\x1b[Klate\n")


def test_no_progress_line_when_stderr_is_not_a_terminal(fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "PROGRESS_IDLE", 0.05)
    monkeypatch.setattr(client, "PROGRESS_TICK", 0.05)
    fake.script = lambda job, daemon: (time.sleep(0.4), daemon.finish(job, 0))
    result = cli(fake, "run", "--", "quiet", stderr_tty=False)
    assert (result.code, result.err) == (0, b"")


# -- signals and pipes (client as a subprocess) -----------------------------


def spawn_client(fake: FakeDaemon, *argv: str, **kw: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HTTPRUNNER_URL=fake.url)
    env.pop("HTTPRUNNER_TOKEN", None)
    return subprocess.Popen(
        [sys.executable, "-m", "httprunner.client", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=as_from_a_terminal,
        **kw,
    )


def endless(job: FakeJob, daemon: FakeDaemon) -> None:
    daemon.emit(job, "stdout", b"started\n")
    with daemon.cond:
        daemon.cond.wait_for(lambda: job.code is not None, timeout=TIMEOUT)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_cancels_the_remote_job(fake: FakeDaemon, signum: int, code: int) -> None:
    fake.script = endless
    proc = spawn_client(fake, "run", "--", "endless")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"
        proc.send_signal(signum)
        assert proc.wait(TIMEOUT) == code
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode()  # type: ignore[union-attr]
    assert "Traceback" not in err
    job_id = next(iter(fake.jobs))
    assert fake.cancels == [job_id]
    assert f"canceled job {job_id}" in err


def test_closed_stdout_pipe_cancels_the_job_like_sigpipe(fake: FakeDaemon) -> None:
    def flood(job: FakeJob, daemon: FakeDaemon) -> None:
        for _ in range(2_000):
            if job.code is not None:
                return
            daemon.emit(job, "stdout", b"y\n" * 4096)
            time.sleep(0.005)

    fake.script = flood
    proc = spawn_client(fake, "run", "--", "yes")
    assert proc.stdout is not None
    proc.stdout.read(10)
    proc.stdout.close()
    assert proc.wait(TIMEOUT) == 128 + signal.SIGPIPE
    assert "Traceback" not in proc.stderr.read().decode()  # type: ignore[union-attr]
    assert fake.cancels == [next(iter(fake.jobs))]


def test_module_entry_point_exits_with_the_job_code(fake: FakeDaemon) -> None:
    fake.script = scripted([("stdout", b"out\n"), ("stderr", b"err\n")], 42)
    proc = spawn_client(fake, "run", "--", "job")
    out, err = proc.communicate(timeout=TIMEOUT)
    assert (proc.returncode, out, err) == (42, b"out\n", b"err\n")


def test_client_does_not_import_twisted() -> None:
    code = "import sys, httprunner.client; print(any(m.startswith('twisted') for m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, check=True
    ).stdout
    assert out == b"False\n"


def test_a_stream_that_keeps_breaking_before_any_byte_is_given_up(
    fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "RECONNECT_FOR", 0.5)
    fake.script = endless

    def headers_then_hang_up(self: Handler, job: FakeJob, stream: str, offset: int, follow: bool) -> None:
        self.send_response(200)
        self.send_header("X-Output-Offset", str(offset))
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True

    monkeypatch.setattr(Handler, "_output", headers_then_hang_up)
    result = cli(fake, "run", "--", "endless")
    assert result.code == client.EXIT_CONNECTION
    assert "keeps breaking" in result.err_text and "may still be running" in result.err_text
    # Bounded: a handful of attempts with backoff, not a hot loop.
    assert 2 <= len(fake.offsets_asked("stdout")) <= 10


def test_an_unexpected_failure_is_still_one_line(fake: FakeDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ctx: Any, args: Any) -> int:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(client, "cmd_list", broken)
    result = cli(fake, "list")
    assert result.code == client.EXIT_HTTP
    assert "RuntimeError('kaboom')" in one_error_line(result)


# -- 503: retried after Retry-After ---------------------------------------------


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits before retrying, recorded instead of slept."""
    waited: list[float] = []
    monkeypatch.setattr(client.Server, "sleep", staticmethod(waited.append))
    return waited


def busy(fake: FakeDaemon, retry_after: str | None, times: int | None = None, kind: str = "root") -> None:
    body = json.dumps({"message": "Service Unavailable", "error": "the queue is full"}).encode()
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    method = "POST" if kind == "root" else "GET"
    fake.failures[(method, kind)] = (503, body, headers)
    if times is not None:
        fake.failure_counts[(method, kind)] = times


def posts(fake: FakeDaemon) -> int:
    return sum(1 for method, _, _ in fake.requests if method == "POST")


def test_a_503_is_retried_after_its_retry_after_and_the_job_runs_once(fake: FakeDaemon, sleeps: list[float]) -> None:
    busy(fake, "2", times=2)
    result = cli(fake, "run", "--", "echo", "hi")
    assert result.code == 0 and result.out == b"hi\n"
    assert sleeps == [2.0, 2.0]
    assert posts(fake) == 3 and len(fake.jobs) == 1
    retries = result.err_text.splitlines()
    assert len(retries) == 2
    assert "503 Service Unavailable: the queue is full; retrying in 2 s (1 of 5)" in retries[0]


def test_no_retry_reports_a_503_at_once(fake: FakeDaemon, sleeps: list[float]) -> None:
    busy(fake, "1", times=1)
    result = cli(fake, "submit", "--no-retry", "--", "echo", "hi")
    assert result.code == client.EXIT_BUSY
    assert "503 Service Unavailable: the queue is full (retry after 1 s)" in one_error_line(result)
    assert sleeps == [] and posts(fake) == 1 and fake.jobs == {}


def test_503_retries_are_bounded_in_number(fake: FakeDaemon, sleeps: list[float]) -> None:
    busy(fake, None)  # no Retry-After: a short default wait
    result = cli(fake, "submit", "--", "echo", "hi")
    assert result.code == client.EXIT_BUSY
    assert sleeps == [client.BUSY_DEFAULT_WAIT] * client.BUSY_RETRIES
    assert posts(fake) == client.BUSY_RETRIES + 1
    assert result.err_text.splitlines()[-1].startswith("httprunner-client: error: 503 Service Unavailable")


def test_503_retries_are_bounded_in_total_wait(fake: FakeDaemon, sleeps: list[float]) -> None:
    busy(fake, "25")
    result = cli(fake, "submit", "--", "echo", "hi")
    # 25 + 25 fit in the 60 s budget; a third wait would not, so no third try
    assert result.code == client.EXIT_BUSY and sleeps == [25.0, 25.0] and posts(fake) == 3


def test_a_retry_after_beyond_the_budget_is_not_waited_for(fake: FakeDaemon, sleeps: list[float]) -> None:
    busy(fake, "3600")
    result = cli(fake, "submit", "--", "echo", "hi")
    assert result.code == client.EXIT_BUSY and sleeps == [] and posts(fake) == 1
    assert "(retry after 3600 s)" in one_error_line(result)


def test_reads_are_retried_too(fake: FakeDaemon, sleeps: list[float]) -> None:
    job = finished_job(fake, out=b"out\n")
    busy(fake, "1", times=1, kind="job")
    result = cli(fake, "status", job.id)
    assert result.code == 0 and json.loads(result.out)["id"] == job.id and sleeps == [1.0]


def test_other_errors_are_not_retried(fake: FakeDaemon, sleeps: list[float]) -> None:
    fake.failures[("POST", "root")] = (500, b"{}", {"Retry-After": "1"})
    assert cli(fake, "submit", "--", "echo", "hi").code == client.EXIT_HTTP
    assert sleeps == [] and posts(fake) == 1


@pytest.mark.parametrize(
    "header, seconds",
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("Wed, 01 Jan 2031 00:00:10 GMT", 10.0),  # an HTTP date: the time left until it
        ("Wed, 01 Jan 2031 00:00:00 GMT", 0.0),
        ("Tue, 31 Dec 2030 23:59:00 GMT", 0.0),  # already past
        ("soon", client.BUSY_DEFAULT_WAIT),
        ("-5", client.BUSY_DEFAULT_WAIT),
        (None, client.BUSY_DEFAULT_WAIT),
    ],
)
def test_retry_after_is_delay_seconds_or_an_http_date(header: str | None, seconds: float) -> None:
    now = 1924992000.0  # 2031-01-01T00:00:00Z
    assert client.retry_after_seconds(header, now=lambda: now) == seconds


# -- unix sockets ----------------------------------------------------------------


@pytest.mark.parametrize("url", ["unix:", "unix://run/x.sock"])
def test_a_unix_url_needs_a_socket_path(url: str) -> None:
    result = cli(None, "--url", url, "list")
    assert result.code == client.EXIT_USAGE
    assert "unix:/run/httprunner.sock" in one_error_line(result)


def test_no_daemon_on_a_unix_socket_is_a_connection_error(tmp_path: Path) -> None:
    path = tmp_path / "none.sock"
    result = cli(None, "--url", "unix:%s" % path, "list")
    assert result.code == client.EXIT_CONNECTION
    assert "cannot talk to unix:%s: no daemon listens on that socket" % path in one_error_line(result)
