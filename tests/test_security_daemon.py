"""Security end to end: tokens, SIGHUP reload, Host/Origin, policy, against a real daemon."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import Daemon

TOKEN = "s3cret-token-0123456789abcdef"


def test_tokens_guard_every_route_but_healthz(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# deploy bot\n%s\n\n" % TOKEN)
    tokens.chmod(0o600)
    daemon = start_daemon("--token-file", str(tokens))
    for method, path in [
        ("POST", "/"),
        ("GET", "/jobs"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("GET", "/no/such"),
    ]:
        status, headers, body = daemon.request(method, path, b'{"command":"echo"}' if method == "POST" else None)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), path
        assert set(json.loads(body)) == {"message", "error"}
    assert daemon.request("GET", "/healthz")[0] == 200
    wrong_same_length = "x" * len(TOKEN)
    for token in (wrong_same_length, "short"):
        status, headers, _ = daemon.request("GET", "/jobs", headers={"Authorization": "Bearer " + token})
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert daemon.request("GET", "/jobs?access_token=" + TOKEN)[0] == 401
    assert daemon.request("GET", "/jobs?token=" + TOKEN)[0] == 401
    status, job = daemon.api("POST", "/", {"command": "echo", "args": "ok"}, token=TOKEN)
    assert status == 202
    assert TOKEN not in daemon.log_text()


def test_sighup_reloads_tokens_without_dropping_jobs(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    daemon = start_daemon("--token-file", str(tokens))
    status, running = daemon.api("POST", "/", {"command": "sleep", "args": "3"}, token=TOKEN)
    assert status == 202
    new = "n3w-token-abcdefghijklmnopqrstuvwxyz"
    tokens.write_text(new + "\n")
    daemon.proc.send_signal(signal.SIGHUP)
    for _ in range(100):
        if daemon.api("GET", "/jobs", token=new)[0] == 200:
            break
        time.sleep(0.05)
    assert daemon.api("GET", "/jobs", token=new)[0] == 200
    assert daemon.api("GET", "/jobs", token=TOKEN)[0] == 401
    status, job = daemon.api("GET", "/%s?wait=10" % running["id"], token=new)
    assert job["state"] == "succeeded", "the reload must not touch running jobs"


def test_host_and_origin_checks(httprunner_daemon: Daemon) -> None:
    d = httprunner_daemon
    body = b'{"command":"echo"}'
    assert d.request("POST", "/", body, headers={"Host": "evil.example:%d" % d.port})[0] == 400
    assert d.request("POST", "/", body, headers={"Host": "localhost:%d" % d.port})[0] == 202
    before = len(d.api("GET", "/jobs")[1]["jobs"])
    status, _, data = d.request("POST", "/", body, headers={"Origin": "https://evil.example"})
    assert status == 403 and json.loads(data)["message"] == "Forbidden"
    assert d.request("POST", "/", body, headers={"Origin": "null"})[0] == 403
    assert len(d.api("GET", "/jobs")[1]["jobs"]) == before, "a refused origin creates no job"
    assert d.request("POST", "/", body, headers={"Origin": "http://127.0.0.1:%d" % d.port})[0] == 202


def test_policy_refuses_unlisted_flags(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    script = tmp_path / "show-args"
    script.write_text('#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done\n')
    script.chmod(0o755)
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[commands.git-like]\npath = "%s"\nargs = ["fetch"]\nflags = ["--depth="]\nrest_pattern = \'[a-z0-9=-]+\'\n'
        % script
    )
    daemon = start_daemon("--policy", str(policy))
    status, error = daemon.api(
        "POST", "/", {"command": "git-like", "args": ["--upload-pack=touch /tmp/pwned", "origin"]}
    )
    assert status == 403 and "--upload-pack" in error["error"]
    assert daemon.api("POST", "/", {"command": "sh", "args": ["-c", "id"]})[0] == 403
    job = daemon.wait(daemon.submit("git-like", "--depth=1", "origin")["id"])
    assert job["stdout"] == "[fetch]\n[--depth=1]\n[origin]\n"
