"""Integration tests of the runner with real processes on the real reactor.

Each spawn test runs twice: with the job's cwd unset (Twisted spawns with
``posix_spawnp``) and set (Twisted forks), since the two paths report
failures differently.  Liveness of leftover processes is read from
``/proc/<pid>/stat`` because ``kill(pid, 0)`` succeeds on zombies.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from httprunner import jobs
from httprunner.jobs import JobSpec
from httprunner.policy import default_environment
from httprunner.process import JobProcessProtocol, spawn_session
from httprunner.runner import JobRunner, Settings
from httprunner.store import ListQuery, MemoryJobStore

from .conftest import alive
from .fakes import result_of

SH = shutil.which("sh") or "/bin/sh"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def sleep(seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@pytest.fixture(params=[None, "cwd"], ids=["posix_spawn", "fork"])
def cwd(request: Any, tmp_path: Path) -> str | None:
    return None if request.param is None else str(tmp_path)


@pytest.fixture(scope="module")
def warm_reactor() -> None:
    """The reactor opens its SIGCHLD waker at the first spawn: do it now."""
    pytest_twisted.blockon(run(JobRunner(reactor=reactor, store=MemoryJobStore(1), settings=Settings()), "true"))


@pytest.fixture
def runner(warm_reactor: None) -> Iterator[JobRunner]:
    fds = open_fds()
    r = JobRunner(
        reactor=reactor,
        store=MemoryJobStore(1000),
        settings=Settings(max_running=64, kill_grace=0.5, max_output=4 << 20),
    )
    yield r
    assert r.running_count == 0, "a test left a job running"
    assert open_fds() <= fds, "a test leaked file descriptors"


def run(r: JobRunner, program: str, *args: str, cwd: str | None = None, **fields: Any) -> Deferred[jobs.Job]:
    env = fields.pop("env", None) or default_environment(os.environ)
    job = result_of(
        r.submit(JobSpec(command=program, arguments=list(args), program=program, args=args, env=env, cwd=cwd, **fields))
    )
    return r.when_finished(job)


def newest(r: JobRunner) -> jobs.Job:
    return result_of(r.store.list(ListQuery(limit=1)))[0]


@pytest.mark.parametrize("code", [0, 1, 42, 255])
@pytest_twisted.inlineCallbacks
def test_exit_codes(runner: JobRunner, cwd: str | None, code: int) -> Any:
    job = yield run(runner, SH, "-c", "echo out; echo err >&2; exit %d" % code, cwd=cwd)
    assert (job.code, job.stdout.text(), job.stderr.text()) == (code, "out\n", "err\n")
    assert job.state == (jobs.SUCCEEDED if code == 0 else jobs.FAILED)
    assert job.err is None and job.pid and job.duration > 0


@pytest_twisted.inlineCallbacks
def test_killed_by_a_signal_we_did_not_send(runner: JobRunner, cwd: str | None) -> Any:
    job = yield run(runner, SH, "-c", "kill -9 $$", cwd=cwd)
    assert (job.state, job.code, job.signal, job.err["code"]) == (jobs.FAILED, 137, "SIGKILL", "SIGNAL")


@pytest_twisted.inlineCallbacks
def test_missing_and_non_executable_programs(runner: JobRunner, cwd: str | None, tmp_path: Path) -> Any:
    missing = yield run(runner, "/nonexistent/prog", cwd=cwd)
    assert (missing.state, missing.code, missing.err["code"]) == (jobs.SPAWN_FAILED, 127, "ENOENT")
    plain = tmp_path / "plain.sh"
    plain.write_text("echo hi\n")
    denied = yield run(runner, str(plain), cwd=cwd)
    assert (denied.state, denied.code, denied.err["code"]) == (jobs.SPAWN_FAILED, 126, "EACCES")
    unknown = yield run(runner, "no-such-command-here", cwd=cwd)
    assert unknown.code == 127 and "not found" in unknown.err["message"]


@pytest_twisted.inlineCallbacks
def test_one_mebibyte_on_each_stream(runner: JobRunner, cwd: str | None) -> Any:
    job = yield run(runner, SH, "-c", "head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2", cwd=cwd)
    assert (job.stdout.total, job.stderr.total, job.stdout.dropped) == (1 << 20, 1 << 20, 0)
    assert job.stdout.text() == "\0" * (1 << 20)


@pytest_twisted.inlineCallbacks
def test_multibyte_text_survives_pipe_reads(runner: JobRunner, tmp_path: Path) -> Any:
    text = "zażółć gęślą jaźń — ✓ 日本語 🎉\n" * 30_000  # ~1.4 MB, chunked at arbitrary bytes
    source = tmp_path / "text"
    source.write_text(text, encoding="utf-8")
    job = yield run(runner, "cat", str(source))
    assert job.stdout.total == len(text.encode()) and job.stdout.text() == text
    assert "\ufffd" not in job.stdout.text()


@pytest_twisted.inlineCallbacks
def test_stdin_is_eof_or_the_given_text(runner: JobRunner, cwd: str | None) -> Any:
    empty = yield run(runner, "cat", cwd=cwd)
    assert (empty.state, empty.stdout.text()) == (jobs.SUCCEEDED, "")
    fed = yield run(runner, "cat", stdin=b"line 1\nline 2\n", cwd=cwd)
    assert fed.stdout.text() == "line 1\nline 2\n"
    # without stdin text, stdin is /dev/null (end of file, nothing to write to)
    devnull = yield run(runner, SH, "-c", "readlink /proc/self/fd/0", cwd=cwd)
    assert devnull.stdout.text() == "/dev/null\n"


@pytest_twisted.inlineCallbacks
def test_environment_is_explicit(runner: JobRunner, monkeypatch: Any) -> Any:
    monkeypatch.setenv("HTTPRUNNER_TEST_SECRET", "hunter2")
    job = yield run(runner, "env", env=default_environment(os.environ))
    names = {line.split("=", 1)[0] for line in job.stdout.text().splitlines()}
    assert "HTTPRUNNER_TEST_SECRET" not in names and "hunter2" not in job.stdout.text()
    assert "HTTPRUNNER_JOB_ID=%s" % job.id in job.stdout.text().splitlines()
    assert "PATH" in names


@pytest_twisted.inlineCallbacks
def test_a_grandchild_holding_stdout_does_not_keep_the_job_running(runner: JobRunner, tmp_path: Path) -> Any:
    pidfile = tmp_path / "bg.pid"
    started = time.monotonic()
    job = yield run(runner, SH, "-c", "sleep 30 & echo $! > %s; echo started" % pidfile)
    try:
        assert job.state == jobs.SUCCEEDED and job.stdout.text() == "started\n"
        assert time.monotonic() - started < 10
    finally:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest_twisted.inlineCallbacks
def test_timeout_kills_the_whole_group(runner: JobRunner, cwd: str | None, tmp_path: Path) -> Any:
    pidfile = tmp_path / "grandchild.pid"
    job = yield run(runner, SH, "-c", "sleep 60 & echo $! > %s; wait" % pidfile, cwd=cwd, timeout=0.5)
    assert (job.state, job.err["code"], job.signal, job.code) == (jobs.TIMED_OUT, "TIMEOUT", "SIGTERM", 143)
    grandchild = int(pidfile.read_text())
    for _ in range(100):
        if not alive(grandchild):
            break
        yield sleep(0.02)
    assert not alive(grandchild)


@pytest_twisted.inlineCallbacks
def test_a_job_that_ignores_term_is_killed_after_the_grace(runner: JobRunner, tmp_path: Path) -> Any:
    ready = tmp_path / "ready"
    d = run(runner, SH, "-c", "trap '' TERM; touch %s; while :; do sleep 0.1; done" % ready)
    job = newest(runner)
    while not ready.exists():
        yield sleep(0.02)
    started = time.monotonic()
    runner.cancel(job)
    job = yield d
    assert (job.state, job.signal, job.code) == (jobs.CANCELED, "SIGKILL", 137)
    assert time.monotonic() - started >= 0.45  # it survived TERM until the grace ran out


@pytest_twisted.inlineCallbacks
def test_cancel_kills_grandchildren(runner: JobRunner, tmp_path: Path) -> Any:
    pidfile = tmp_path / "gc.pid"
    d = run(runner, SH, "-c", "sleep 60 & echo $! > %s; wait" % pidfile)
    job = newest(runner)
    while not pidfile.exists() or not pidfile.read_text().strip():
        yield sleep(0.02)
    runner.cancel(job)
    yield d
    grandchild = int(pidfile.read_text())
    for _ in range(100):
        if not alive(grandchild):
            break
        yield sleep(0.02)
    assert job.state == jobs.CANCELED and not alive(grandchild)


@pytest_twisted.inlineCallbacks
def test_output_cap_keeps_head_and_tail_of_a_flood(tmp_path: Path) -> Any:
    r = JobRunner(reactor=reactor, store=MemoryJobStore(10), settings=Settings(max_output=1 << 20))
    job = yield run(r, SH, "-c", "seq 1 100000; yes | head -c 50000000")
    assert job.state == jobs.SUCCEEDED
    assert job.stdout.total == len("".join("%d\n" % i for i in range(1, 100001))) + 50_000_000
    assert job.stdout.dropped == job.stdout.total - (1 << 20)
    text = job.stdout.text()
    assert text.startswith("1\n2\n3\n") and "bytes dropped ...]" in text and text.endswith("y\ny\n")


@pytest_twisted.inlineCallbacks
def test_fifty_concurrent_jobs_all_complete(runner: JobRunner) -> Any:
    finished = yield gatherResults([run(runner, "echo", str(i)) for i in range(50)])
    assert [j.stdout.text() for j in finished] == ["%d\n" % i for i in range(50)]


def session_and_group(pid: int) -> tuple[int, int]:
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return int(fields[2]), int(fields[3])  # pgrp, session


@pytest_twisted.inlineCallbacks
def test_each_job_leads_its_own_session_on_both_spawn_paths(runner: JobRunner, cwd: str | None, tmp_path: Path) -> Any:
    ready = tmp_path / "ready"
    d = run(runner, SH, "-c", "touch %s; sleep 30" % ready, cwd=cwd)
    job = newest(runner)
    while not ready.exists():
        yield sleep(0.02)
    assert job.pid is not None
    assert session_and_group(job.pid) == (job.pid, job.pid)
    assert session_and_group(job.pid)[1] != os.getsid(0)
    runner.cancel(job)
    yield d


@pytest_twisted.inlineCallbacks
def test_jobs_inherit_no_descriptor_and_no_ignored_signal(runner: JobRunner, cwd: str | None) -> Any:
    leaked = os.open(os.devnull, os.O_RDONLY)
    os.set_inheritable(leaked, True)  # as a descriptor inherited at startup
    try:
        runner.startService()
        job = yield run(runner, SH, "-c", "ls /proc/self/fd; grep SigIgn /proc/self/status", cwd=cwd)
    finally:
        runner.stopService()
        os.close(leaked)
    *fd_lines, sig_line = job.stdout.text().splitlines()
    fds = sorted(int(x) for x in fd_lines)
    assert fds[:3] == [0, 1, 2] and leaked not in fds
    ignored = int(sig_line.split()[1], 16)
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):  # ignored by Python itself
        assert not ignored & (1 << (signum - 1)), "%s must not stay ignored in jobs" % signum.name


# -- what a job cost (wait4) ---------------------------------------------------

BURN_CPU = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.25:\n    pass\n"
#: allocates (and touches) 50 MB more than this test process's peak RSS:
#: below that peak the kernel's figure is ours, not the job's
ALLOCATE = "data = b'x' * ((%d << 10) + (50 << 20))\n"


@pytest.fixture
def recording_runner(warm_reactor: None) -> Iterator[tuple[JobRunner, list[JobProcessProtocol]]]:
    """A runner that keeps every job's process protocol, to read its cost."""
    protocols: list[JobProcessProtocol] = []

    def spawn(protocol: JobProcessProtocol, executable: str, args: list[str], env: Any, path: Any) -> Any:
        protocols.append(protocol)
        return spawn_session(reactor, protocol, executable, args, env, path)

    r = JobRunner(reactor=reactor, store=MemoryJobStore(1000), settings=Settings(max_running=64), spawn=spawn)
    yield r, protocols
    assert r.running_count == 0


@pytest_twisted.inlineCallbacks
def test_a_jobs_cpu_and_peak_memory_come_from_wait4(
    recording_runner: tuple[JobRunner, list[JobProcessProtocol]], cwd: str | None
) -> Any:
    r, protocols = recording_runner
    # sh runs python and waits for it: what its children cost counts too
    script = '"$0" -c "$1"; true'
    ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield run(r, SH, "-c", script, sys.executable, BURN_CPU, cwd=cwd)
    yield run(r, SH, "-c", script, sys.executable, ALLOCATE % ours, cwd=cwd)
    yield run(r, SH, "-c", "true", cwd=cwd)
    burn, allocate, small = protocols
    assert burn.cpu_seconds is not None and burn.cpu_seconds >= 0.1
    assert allocate.max_rss_bytes is not None and allocate.max_rss_bytes >= (ours << 10) + (40 << 20)
    assert small.cpu_seconds is not None and small.cpu_seconds < 0.1
    # a job far smaller than the daemon: its peak is not known, never the daemon's
    assert small.max_rss_bytes is None


@pytest_twisted.inlineCallbacks
def test_the_cost_is_known_even_for_jobs_that_exit_before_twisted_registers_them(
    recording_runner: tuple[JobRunner, list[JobProcessProtocol]],
) -> Any:
    # Twisted's registerReapProcessHandler reaps a child that already
    # exited (often /bin/true on a busy machine): that path keeps it too.
    r, protocols = recording_runner
    yield gatherResults([run(r, shutil.which("true") or "/bin/true") for _ in range(40)])
    assert len(protocols) == 40
    assert all(p.cpu_seconds is not None for p in protocols)
