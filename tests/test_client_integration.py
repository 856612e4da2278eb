"""Integration tests: ``httprunner-client`` against a real ``twistd -n httprunner`` child.

Both run as real processes: the daemon listens on 127.0.0.1 with an
ephemeral port (read back from its log), the client is
``python -m httprunner.client`` with ``PYTHONPATH`` at the checkout, and
the jobs are real ``sh``/``sleep`` processes.

The daemon fixtures (``start_daemon``, ``httprunner_daemon``) come from
conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, TIMEOUT, Daemon, as_from_a_terminal


def client_env(daemon: Daemon | None, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("HTTPRUNNER_TOKEN", None)
    if daemon is not None:
        env["HTTPRUNNER_URL"] = daemon.url
    env.update(extra)
    return env


def client(daemon: Daemon | None, *argv: str, **extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "httprunner.client", *argv],
        env=client_env(daemon, **extra),
        capture_output=True,
        timeout=TIMEOUT,
    )


def spawn_client(daemon: Daemon, *argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "httprunner.client", *argv],
        env=client_env(daemon),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=as_from_a_terminal,
    )


def only_job(daemon: Daemon) -> dict[str, Any]:
    status, body = daemon.api("GET", "/jobs")
    assert status == 200 and len(body["jobs"]) == 1, body
    return body["jobs"][0]


def wait_until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


# -- run ---------------------------------------------------------------------


def test_run_streams_output_before_the_job_ends(httprunner_daemon: Daemon) -> None:
    proc = spawn_client(httprunner_daemon, "run", "--", "sh", "-c", "echo first; sleep 2; echo second")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"first\n"
        # "first" is on our stdout while the job is still running.
        job = only_job(httprunner_daemon)
        assert (job["state"], job["code"]) == ("running", None)
        assert proc.stdout.read() == b"second\n"
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize(
    "script, code",
    [("exit 0", 0), ("exit 3", 3), ("kill -TERM $$", 128 + 15)],
    ids=["zero", "three", "self-killed"],
)
def test_run_exits_with_the_jobs_code(httprunner_daemon: Daemon, script: str, code: int) -> None:
    result = client(httprunner_daemon, "run", "--", "sh", "-c", script)
    assert result.returncode == code, result.stderr
    assert b"Traceback" not in result.stderr


def test_run_keeps_stdout_and_stderr_apart(httprunner_daemon: Daemon) -> None:
    result = client(httprunner_daemon, "run", "--", "sh", "-c", "echo out; echo err >&2; echo more")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"out\nmore\n", b"err\n")


def test_run_passes_arguments_with_spaces_and_large_output_intact(httprunner_daemon: Daemon) -> None:
    result = client(httprunner_daemon, "run", "--", "printf", "%s|", "a b", "  c")
    assert result.stdout == b"a b|  c|"
    expected = subprocess.run(["seq", "1", "150000"], capture_output=True, check=True).stdout
    result = client(httprunner_daemon, "run", "--", "seq", "1", "150000")
    assert (result.returncode, len(result.stdout)) == (0, len(expected))
    assert result.stdout == expected


def test_ctrl_c_cancels_the_remote_job_and_exits_130(httprunner_daemon: Daemon) -> None:
    proc = spawn_client(httprunner_daemon, "run", "--", "sleep", "60")
    try:
        # Wait until the client has submitted and the job really runs.
        wait_until(lambda: [j["state"] for j in httprunner_daemon.api("GET", "/jobs")[1]["jobs"]] == ["running"])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    job_id = only_job(httprunner_daemon)["id"]
    status, job = httprunner_daemon.api("GET", f"/{job_id}?wait=20")
    assert (status, job["state"]) == (200, "canceled")
    assert f"canceled job {job_id}".encode() in proc.stderr.read()  # type: ignore[union-attr]


# -- errors ------------------------------------------------------------------


def test_stopped_server_is_connection_refused_exit_201(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon()
    daemon.stop()
    result = client(daemon, "run", "--", "true")
    assert result.returncode == 201
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "connection refused" in lines[0], lines


def test_wrong_token_is_401_exit_203_and_right_token_works(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("right-token\n")
    daemon = start_daemon("--token-file", str(tokens))
    wrong = client(daemon, "run", "--", "true", HTTPRUNNER_TOKEN="wrong-token")
    assert wrong.returncode == 203
    lines = wrong.stderr.decode().splitlines()
    assert len(lines) == 1 and "401 Unauthorized" in lines[0], lines
    assert "wrong-token" not in lines[0]
    missing = client(daemon, "list")
    assert missing.returncode == 203
    token_file = tmp_path / "client-token"
    token_file.write_text("right-token\n")
    right = client(daemon, "--token-file", str(token_file), "run", "--", "sh", "-c", "echo ok; exit 4")
    assert (right.returncode, right.stdout) == (4, b"ok\n")


def test_command_not_allowed_is_403_exit_203(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon("--whitelist", "true")
    result = client(daemon, "run", "--", "sh", "-c", "true")
    assert result.returncode == 203
    assert "403 Forbidden" in result.stderr.decode()
    assert client(daemon, "run", "--", "true").returncode == 0


def test_unknown_job_is_404_exit_204(httprunner_daemon: Daemon) -> None:
    result = client(httprunner_daemon, "status", "0" * 40)
    assert result.returncode == 204
    assert "404 Not Found" in result.stderr.decode()


# -- the other commands ------------------------------------------------------


def test_submit_wait_status_logs_list(httprunner_daemon: Daemon) -> None:
    submitted = client(httprunner_daemon, "submit", "--", "sh", "-c", "echo hello; echo oops >&2; exit 4")
    assert submitted.returncode == 0
    job_id = submitted.stdout.decode().strip()
    assert re.fullmatch(r"[0-9a-f]{40}", job_id)

    assert client(httprunner_daemon, "wait", job_id).returncode == 4

    status = client(httprunner_daemon, "status", job_id)
    job = json.loads(status.stdout)
    assert (job["id"], job["code"], job["state"]) == (job_id, 4, "failed")
    summary = client(httprunner_daemon, "status", "--summary", job_id).stdout.decode()
    assert "state:    failed (code 4)" in summary

    assert client(httprunner_daemon, "logs", job_id).stdout == b"hello\n"
    assert client(httprunner_daemon, "logs", "--stderr", job_id).stdout == b"oops\n"

    listed = json.loads(client(httprunner_daemon, "list", "--state", "failed", "--limit", "5").stdout)
    assert [j["id"] for j in listed["jobs"]] == [job_id]
    assert json.loads(client(httprunner_daemon, "list", "--state", "succeeded").stdout) == {"jobs": [], "next": None}


def test_logs_follow_prints_until_the_job_ends(httprunner_daemon: Daemon) -> None:
    job_id = (
        client(httprunner_daemon, "submit", "--", "sh", "-c", "echo one; sleep 1; echo two").stdout.decode().strip()
    )
    result = client(httprunner_daemon, "logs", "-f", job_id)
    assert (result.returncode, result.stdout) == (0, b"one\ntwo\n")


def test_cancel_ends_a_running_job_as_canceled(httprunner_daemon: Daemon) -> None:
    job_id = client(httprunner_daemon, "submit", "--", "sleep", "60").stdout.decode().strip()
    wait_until(lambda: httprunner_daemon.api("GET", f"/{job_id}")[1]["state"] == "running")
    assert client(httprunner_daemon, "cancel", job_id).returncode == 0
    assert client(httprunner_daemon, "wait", job_id).returncode == 143
    assert httprunner_daemon.api("GET", f"/{job_id}")[1]["state"] == "canceled"
    again = client(httprunner_daemon, "cancel", job_id)
    assert again.returncode == 0 and b"already ended (canceled)" in again.stderr


def test_wait_timeout_exits_206(httprunner_daemon: Daemon) -> None:
    job_id = client(httprunner_daemon, "submit", "--", "sleep", "60").stdout.decode().strip()
    result = client(httprunner_daemon, "wait", "--timeout", "1", job_id)
    assert result.returncode == 206
    assert httprunner_daemon.api("GET", f"/{job_id}")[1]["code"] is None


def test_run_with_stdin_env_and_timeout(httprunner_daemon: Daemon, tmp_path: Path) -> None:
    stdin = tmp_path / "stdin.txt"
    stdin.write_text("from a file\n")
    result = client(httprunner_daemon, "run", "--stdin-file", str(stdin), "--", "cat")
    assert (result.returncode, result.stdout) == (0, b"from a file\n")
    timed = client(httprunner_daemon, "run", "--timeout", "0.5", "--", "sleep", "30")
    assert timed.returncode == 143
    assert b"timed_out" in timed.stderr


def test_env_not_allowed_is_a_400_exit_202(httprunner_daemon: Daemon) -> None:
    result = client(httprunner_daemon, "run", "--env", "SECRET=1", "--", "true")
    assert result.returncode == 202
    assert "400 Bad Request" in result.stderr.decode()


class CuttingProxy:
    """A loopback TCP relay to the daemon that cuts the first response to a
    ``GET /<id>/stdout`` after ``cut_after`` bytes, as a flaky network or
    proxy would; it records every request line it relays."""

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.request_lines: list[str] = []
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(downstream,), daemon=True).start()

    def _relay(self, downstream: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        with downstream, upstream:
            first = downstream.recv(65536)
            line = first.split(b"\r\n", 1)[0].decode("latin-1")
            self.request_lines.append(line)
            cut = re.match(r"GET /[0-9a-f]{40}/stdout\?", line) is not None and self.cuts == 0
            if cut:
                self.cuts += 1
            upstream.sendall(first)
            threading.Thread(target=self._pipe, args=(downstream, upstream), daemon=True).start()
            sent = 0
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                if cut and sent + len(data) >= self.cut_after:
                    downstream.sendall(data[: self.cut_after - sent])
                    downstream.shutdown(socket.SHUT_RDWR)
                    return
                downstream.sendall(data)
                sent += len(data)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


def test_run_resumes_a_cut_stream_from_the_real_daemon_without_loss(httprunner_daemon: Daemon) -> None:
    proxy = CuttingProxy(httprunner_daemon.port, cut_after=20_000)
    try:
        expected = subprocess.run(["seq", "1", "60000"], capture_output=True, check=True).stdout
        result = client(None, "run", "--", "seq", "1", "60000", HTTPRUNNER_URL=f"http://127.0.0.1:{proxy.port}")
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected  # nothing lost, nothing written twice
    offsets = [int(m.group(1)) for line in proxy.request_lines if (m := re.search(r"/stdout\?offset=(\d+)", line))]
    assert offsets[0] == 0 and len(offsets) >= 2 and 0 < offsets[1] < len(expected)


# -- a daemon on a unix socket -------------------------------------------------


def test_client_reaches_a_daemon_listening_on_a_unix_socket(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    sock = tmp_path / "api.sock"
    start_daemon("--listen", "unix:%s" % sock, "--allowed-host", "runner.example")
    url = "unix:%s" % sock
    run = client(None, "--url", url, "run", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (run.returncode, run.stdout, run.stderr) == (3, b"out\n", b"err\n")
    listed = client(None, "list", "--json", HTTPRUNNER_URL=url)
    assert listed.returncode == 0
    [job] = json.loads(listed.stdout)["jobs"]
    assert job["arguments"] == ["-c", "echo out; echo err >&2; exit 3"] and job["code"] == 3


def test_run_waits_out_a_full_daemon_and_then_runs(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon("--max-running", "1", "--max-queued", "0")
    daemon.submit("sleep", "1")
    run = client(daemon, "run", "--", "echo", "hi")
    assert run.returncode == 0 and run.stdout == b"hi\n"
    assert b"503 Service Unavailable: the queue is full" in run.stderr and b"retrying in 1 s (1 of 5)" in run.stderr
    daemon.submit("sleep", "30")
    refused = client(daemon, "--no-retry", "submit", "--", "echo", "hi")
    assert refused.returncode == 205 and b"(retry after 1 s)" in refused.stderr and b"retrying" not in refused.stderr
