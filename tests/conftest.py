"""Shared fixtures: a real ``twistd -n httprunner`` child on loopback."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).with_name("twistd")
TIMEOUT = 30.0


@dataclass
class Daemon:
    """A running ``twistd -n httprunner`` child."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    terminated: bool = False

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """One raw request: (status, headers, body)."""
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def api(self, method: str, path: str, document: Any = None, token: str | None = None) -> tuple[int, Any]:
        """A JSON request: (status, decoded body)."""
        headers = {"Authorization": "Bearer %s" % token} if token else {}
        body = None if document is None else json.dumps(document).encode()
        status, _, data = self.request(method, path, body, headers)
        return status, json.loads(data)

    def submit(self, command: str, *args: str, **fields: Any) -> dict[str, Any]:
        status, job = self.api("POST", "/", {"command": command, "args": list(args), **fields})
        assert status == 202, job
        return job

    def wait(self, job_id: str, seconds: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            status, job = self.api("GET", "/%s?wait=5" % job_id)
            assert status == 200, job
            if job["code"] is not None:
                return job
        raise AssertionError("job %s did not finish" % job_id)

    def terminate(self) -> None:
        """Send SIGTERM once (see :meth:`stop`)."""
        if self.proc.poll() is None and not self.terminated:
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        self.terminate()
        if self.proc.poll() is None:
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def twistd_command(*options: str, log: Path | None = None) -> list[str]:
    logging = ["--logfile", str(log)] if log is not None else []
    return [str(TWISTD), "-n", "--pidfile=", *logging, "httprunner", *options]


def child_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def _new_log(tmp_path: Path) -> Path:
    """A fresh ``twistd-N.log`` name, also when daemons start from threads."""
    for n in itertools.count(len(list(tmp_path.glob("twistd-*.log")))):
        log = tmp_path / ("twistd-%d.log" % n)
        try:
            log.touch(exist_ok=False)
        except FileExistsError:
            continue
        return log
    raise AssertionError("unreachable")


def spawn_daemon(
    tmp_path: Path, *options: str, env: dict[str, str] | None = None, wrapper: Sequence[str] = ()
) -> Daemon:
    """Start a daemon and wait for its port; ``wrapper`` prefixes the
    command (it must exec twistd in the same process, so signals reach it)."""
    log = _new_log(tmp_path)
    proc = subprocess.Popen(
        [*wrapper, *twistd_command("--allow-root", "--listen", "tcp:0:interface=127.0.0.1", *options, log=log)],
        cwd=str(tmp_path),
        env=env or child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = re.search(r"starting on (\d+)", text)
        if found:
            return Daemon(proc, int(found.group(1)), log)
        if proc.poll() is not None:
            raise AssertionError("twistd exited %s:\n%s" % (proc.returncode, text))
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("twistd did not report its port in time")


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start ``twistd -n httprunner OPTIONS...`` children; all are stopped at teardown."""
    started: list[Daemon] = []

    def start(*options: str, env: dict[str, str] | None = None, wrapper: Sequence[str] = ()) -> Daemon:
        daemon = spawn_daemon(tmp_path, *options, env=env, wrapper=wrapper)
        started.append(daemon)
        return daemon

    yield start
    # Side by side: each stop takes a moment (jobs end, the store closes).
    for daemon in started:
        daemon.terminate()
    for daemon in started:
        daemon.stop()


@pytest.fixture
def httprunner_daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon()


def as_from_a_terminal() -> None:
    """preexec_fn: give the child SIGINT's default disposition.

    A shell without job control starts background commands with SIGINT
    ignored, and the ignore is inherited down to our children; a client
    typed at a terminal gets Ctrl-C, so tests that send SIGINT model that.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (``kill(pid, 0)`` succeeds
    on zombies, so read ``/proc/<pid>/stat``)."""
    try:
        stat = Path("/proc/%d/stat" % pid).read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
