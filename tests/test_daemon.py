"""End to end: a real ``twistd -n httprunner`` child driven over loopback HTTP."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import TIMEOUT, Daemon, alive, child_env, twistd_command

SEED_KEYS = ["stderr", "stdout", "id", "code", "command", "arguments"]


def test_seed_contract_submit_then_poll(httprunner_daemon: Daemon) -> None:
    status, headers, body = httprunner_daemon.request("POST", "/", b'{"command": "echo", "args": "foo  bar"}')
    job = json.loads(body)
    assert status == 202 and headers["Location"] == "/" + job["id"]
    assert headers["Content-Type"] == "application/json"
    assert list(job)[:6] == SEED_KEYS and list(job)[6] == "err"
    assert re.fullmatch(r"[0-9a-f]{40}", job["id"]) and job["arguments"] == ["foo", "bar"]
    assert job["state"] in ("running", "succeeded") and "callback" not in job
    done = httprunner_daemon.wait(job["id"])
    assert (done["stdout"], done["code"], done["state"], done["err"]) == ("foo bar\n", 0, "succeeded", None)
    assert done["created_at"].endswith("Z") and done["duration"] >= 0
    status, again = httprunner_daemon.api("GET", "/%s/" % job["id"])
    assert status == 200 and again == done


def test_code_is_null_until_the_job_finishes(httprunner_daemon: Daemon) -> None:
    job = httprunner_daemon.submit("sleep", "1")
    status, seen = httprunner_daemon.api("GET", "/" + job["id"])
    assert (seen["code"], seen["state"]) == (None, "running")
    assert httprunner_daemon.wait(job["id"])["code"] == 0


@pytest.mark.parametrize(
    "method, path, body, status, fragment",
    [
        ("GET", "/nope/deeper/path", None, 404, "no such route"),
        ("GET", "/" + "0" * 40, None, 404, "unknown, or evicted"),
        ("GET", "/%00abc", None, 404, "no job"),
        ("PUT", "/", b"{}", 405, "not allowed"),
        ("POST", "/", b"not json", 400, "not valid JSON"),
        ("POST", "/", b'{"command":"echo","command":"rm"}', 400, "duplicate key"),
        ("POST", "/", b'{"command":"rm","args":"-rf /tmp/x"}', 403, "not allowed"),
        ("POST", "/", b'{"command":"echo","callback":"ftp://x/"}', 400, "callback"),
        ("POST", "/", b'{"command":"echo","env":{"SECRET":"x"}}', 400, "SECRET"),
        ("GET", "/jobs?limit=0", None, 400, "limit"),
        ("GET", "/jobs?state=bogus", None, 400, "unknown state"),
    ],
)
def test_every_error_is_a_json_body(
    start_daemon: Callable[..., Daemon], method: str, path: str, body: bytes | None, status: int, fragment: str
) -> None:
    daemon = start_daemon("--whitelist", "echo,sleep")
    got, headers, data = daemon.request(method, path, body)
    error = json.loads(data)
    assert got == status and headers["Content-Type"] == "application/json"
    assert set(error) == {"message", "error"} and fragment in error["error"]
    if status == 405:
        assert headers["Allow"] == "POST"


def test_body_over_the_cap_is_413_before_it_is_read(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon("--max-body", "1K")
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"message":"' in answer
    status, job = daemon.api("POST", "/", {"command": "echo", "args": ["x" * 900]})
    assert status == 202


def test_follow_streams_output_before_the_job_ends(httprunner_daemon: Daemon, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job = httprunner_daemon.submit("sh", "-c", "echo first; while [ ! -e %s ]; do sleep 0.05; done; echo second" % gate)
    conn = http.client.HTTPConnection("127.0.0.1", httprunner_daemon.port, timeout=TIMEOUT)
    conn.request("GET", "/%s/stdout?follow=1" % job["id"])
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == "application/octet-stream"
    assert response.readline() == b"first\n"  # while the job still runs
    assert httprunner_daemon.api("GET", "/" + job["id"])[1]["state"] == "running"
    gate.touch()
    assert response.read() == b"second\n"
    conn.close()
    status, headers, body = httprunner_daemon.request("GET", "/%s/stdout?offset=3" % job["id"])
    assert (body, headers["X-Output-Offset"]) == (b"st\nsecond\n", "3")


def test_long_poll_answers_when_the_job_finishes(httprunner_daemon: Daemon) -> None:
    job = httprunner_daemon.submit("sleep", "0.5")
    started = time.monotonic()
    status, done = httprunner_daemon.api("GET", "/%s?wait=20" % job["id"])
    assert status == 200 and done["state"] == "succeeded"
    assert time.monotonic() - started < 15
    status, still = httprunner_daemon.api("GET", "/%s?wait=0.2" % httprunner_daemon.submit("sleep", "5")["id"])
    assert still["code"] is None


def test_cancel_queued_and_running_jobs(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon("--max-running", "1", "--max-queued", "1", "--kill-grace", "1")
    running = daemon.submit("sleep", "30")
    queued = daemon.submit("sleep", "30")
    assert queued["state"] == "queued"
    status, headers, body = daemon.request("POST", "/", b'{"command":"true"}')
    assert status == 503 and headers["Retry-After"] and "queue is full" in json.loads(body)["error"]
    status, canceled = daemon.api("DELETE", "/" + queued["id"])
    assert (status, canceled["state"], canceled["code"], canceled["pid"]) == (202, "canceled", 143, None)
    status, _ = daemon.api("DELETE", "/" + running["id"])
    assert status == 202
    done = daemon.wait(running["id"])
    assert (done["state"], done["err"]["code"], done["signal"]) == ("canceled", "CANCELED", "SIGTERM")
    assert daemon.api("DELETE", "/" + running["id"])[0] == 200
    assert daemon.api("DELETE", "/" + "f" * 40)[0] == 404


def test_listing_is_newest_first_and_filters(httprunner_daemon: Daemon) -> None:
    first = httprunner_daemon.submit("true")
    second = httprunner_daemon.submit("false")
    httprunner_daemon.wait(first["id"]), httprunner_daemon.wait(second["id"])
    status, listing = httprunner_daemon.api("GET", "/jobs")
    assert [j["id"] for j in listing["jobs"]][:2] == [second["id"], first["id"]]
    assert "stdout" not in listing["jobs"][0]
    _, failed = httprunner_daemon.api("GET", "/jobs?state=failed,canceled")
    assert [j["id"] for j in failed["jobs"]] == [second["id"]]
    _, limited = httprunner_daemon.api("GET", "/jobs?limit=1")
    assert len(limited["jobs"]) == 1


def test_healthz_answers_while_a_hundred_jobs_wait(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon("--max-running", "1")
    status, health = daemon.api("GET", "/healthz")
    assert status == 200 and health["status"] == "ok" and health["running"] == 0 and "version" in health
    for _ in range(101):
        daemon.submit("sleep", "30")
    status, health = daemon.api("GET", "/healthz")
    assert (status, health["running"], health["queued"]) == (200, 1, 100)


def test_daemon_environment_does_not_leak(start_daemon: Callable[..., Daemon]) -> None:
    daemon = start_daemon(
        "--pass-env", "HTTPRUNNER_PASSED", env=child_env(AWS_SECRET_ACCESS_KEY="hunter2", HTTPRUNNER_PASSED="yes")
    )
    job = daemon.wait(daemon.submit("env")["id"])
    assert "hunter2" not in job["stdout"] and "HTTPRUNNER_PASSED=yes" in job["stdout"]
    assert "HTTPRUNNER_JOB_ID=%s" % job["id"] in job["stdout"]


class Receiver:
    """A real HTTP callback receiver on loopback, in a thread."""

    def __init__(self, hang: bool = False) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.event = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.received.append((dict(self.headers), body))
                owner.event.set()
                if hang:
                    time.sleep(3)
                    return
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d/hook" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_callback_posts_the_job_as_get_shows_it(httprunner_daemon: Daemon, receiver: Receiver) -> None:
    job = httprunner_daemon.submit("echo", "zażółć ✓", callback=receiver.url)
    assert receiver.event.wait(TIMEOUT)
    headers, body = receiver.received[0]
    sent = json.loads(body)
    assert headers["Content-Type"] == "application/json" and int(headers["Content-Length"]) == len(body)
    assert headers["X-Notify-Timestamp"].isdigit()
    assert sent["stdout"] == "zażółć ✓\n" and sent["callback"] == receiver.url
    assert sent["callback_delivery"]["state"] == "pending"
    for _ in range(100):
        done = httprunner_daemon.api("GET", "/" + job["id"])[1]
        if done["callback_delivery"]["state"] == "delivered":
            break
        time.sleep(0.05)
    assert done["callback_delivery"]["state"] == "delivered" and done["callback_delivery"]["attempts"] == 1
    # apart from the delivery record, the body is what GET answers
    del sent["callback_delivery"], done["callback_delivery"]
    assert sent == done


def test_a_hanging_receiver_does_not_affect_the_daemon(start_daemon: Callable[..., Daemon]) -> None:
    hanging = Receiver(hang=True)
    try:
        daemon = start_daemon("--callback-timeout", "0.5", "--callback-attempts", "1")
        job = daemon.submit("true", callback=hanging.url)
        assert hanging.event.wait(TIMEOUT)
        assert daemon.wait(daemon.submit("echo", "ok")["id"])["stdout"] == "ok\n"
        for _ in range(100):
            record = daemon.api("GET", "/" + job["id"])[1]["callback_delivery"]
            if record["state"] != "pending":
                break
            time.sleep(0.05)
        assert record["state"] == "failed" and record["last_error"]
        assert daemon.api("GET", "/" + job["id"])[1]["state"] == "succeeded"
    finally:
        hanging.close()


def test_sigterm_ends_every_job_even_one_that_ignores_term(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    daemon = start_daemon("--kill-grace", "1")
    pidfile = tmp_path / "stubborn.pid"
    job = daemon.submit("sh", "-c", "trap '' TERM; sleep 300 & echo $! > %s; wait" % pidfile)
    daemon.submit("sleep", "300")
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.02)
    grandchild = int(pidfile.read_text())
    assert daemon.stop() == 0
    assert not alive(job["pid"]) and not alive(grandchild)
    assert "ignored SIGTERM" in daemon.log_text()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.dictionaries(
            st.sampled_from(["command", "args", "timeout", "env", "stdin", "callback", "x"]),
            st.one_of(st.none(), st.integers(), st.text(max_size=20), st.lists(st.text(max_size=5), max_size=3)),
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_any_body_gets_202_or_4xx_never_5xx(shared_daemon: Daemon, body: bytes) -> None:
    status, headers, data = shared_daemon.request("POST", "/", body)
    assert status == 202 or 400 <= status < 500, data
    json.loads(data)


@pytest.fixture(scope="module")
def shared_daemon(tmp_path_factory: Any) -> Iterator[Daemon]:
    from .conftest import spawn_daemon

    daemon = spawn_daemon(tmp_path_factory.mktemp("shared"), "--whitelist", "true,echo")
    yield daemon
    daemon.stop()


# -- the command line -----------------------------------------------------


@pytest.mark.parametrize(
    "options, fragment",
    [
        (["-n", "0"], "--max-jobs"),
        (["-n", "abc"], "--max-jobs"),
        (["-p", "abc"], "--port"),
        (["-p", "70000"], "--port"),
        (["--whitelist", "no-such-program-xyz"], "no-such-program-xyz"),
        (["--listen", "tcp:notaport"], "--listen"),
        (["--max-output", "lots"], "--max-output"),
        (["--on-output-limit", "explode"], "--on-output-limit"),
        (["--listen", "tcp:0:interface=0.0.0.0"], "--token-file"),
    ],
)
def test_bad_options_are_one_line_usage_errors(tmp_path: Path, options: list[str], fragment: str) -> None:
    result = subprocess.run(
        twistd_command("--allow-root", *options), cwd=tmp_path, env=child_env(), capture_output=True, timeout=TIMEOUT
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode != 0
    assert "Traceback" not in output
    assert fragment in output.strip().splitlines()[-1]


def test_a_port_in_use_is_a_clear_refusal(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            twistd_command("--allow-root", "-p", str(port)),
            cwd=tmp_path,
            env=child_env(),
            capture_output=True,
            timeout=TIMEOUT,
        )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode != 0 and "Traceback" not in output
    assert "cannot listen on 127.0.0.1:%d" % port in output


@pytest.mark.skipif(os.getuid() != 0, reason="the root refusal needs root")
def test_root_is_refused_without_allow_root(tmp_path: Path) -> None:
    result = subprocess.run(
        twistd_command("-p", "0"), cwd=tmp_path, env=child_env(), capture_output=True, timeout=TIMEOUT
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode != 0 and "Traceback" not in output
    assert "refusing to run as root" in output.strip().splitlines()[-1]


def test_daemonized_with_pidfile_and_logfile(tmp_path: Path) -> None:
    pidfile, logfile = tmp_path / "httprunner.pid", tmp_path / "httprunner.log"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        str(twistd_command()[0]),
        "--pidfile",
        str(pidfile),
        "--logfile",
        str(logfile),
        "httprunner",
        "--allow-root",
        "-p",
        str(port),
    ]
    assert subprocess.run(command, cwd=tmp_path, env=child_env(), timeout=TIMEOUT).returncode == 0
    pid = int(pidfile.read_text())
    try:
        daemon = Daemon(proc=None, port=port, log=logfile)  # type: ignore[arg-type]
        job = daemon.wait(daemon.submit("echo", "daemonized")["id"])
        assert job["stdout"] == "daemonized\n"
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if not pidfile.exists() and not alive(pid):
            break
        time.sleep(0.05)
    assert not pidfile.exists() and not alive(pid)
    log = logfile.read_text()
    assert "job %s started" % job["id"] in log and "job %s ended" % job["id"] in log
    assert "POST / -> 202" in log


@pytest.mark.skipif(os.getuid() != 0, reason="dropping privileges needs root")
def test_twistd_uid_gid_drops_privileges_for_the_daemon_and_its_jobs(tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    log = tmp_path / "twistd.log"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = twistd_command(log=log)
    command[1:1] = ["--uid", str(nobody.pw_uid), "--gid", str(nobody.pw_gid)]
    proc = subprocess.Popen(command + ["-p", str(port)], cwd=tmp_path, env=child_env())
    daemon = Daemon(proc=proc, port=port, log=log)
    try:
        for _ in range(200):
            if "listening on" in daemon.log_text():
                break
            time.sleep(0.05)
        job = daemon.wait(daemon.submit("id", "-u")["id"])
        assert job["stdout"] == "%d\n" % nobody.pw_uid
        assert "refusing to run as root" not in daemon.log_text()
    finally:
        assert daemon.stop() == 0
