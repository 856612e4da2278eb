"""Unit tests of the JobRunner and the process collector, in memory.

No process is spawned: a verified fake reactor records spawnProcess calls,
the tests drive the ProcessProtocol by hand, and a Clock stands in for
time, so timeouts and kill escalation are checked without sleeping.
"""

from __future__ import annotations

import errno
import os
import signal
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from httprunner import jobs
from httprunner.jobs import JobSpec
from httprunner.process import DRAIN_MIN_INTERVAL
from httprunner.runner import JobRunner, Settings, ShuttingDown, SpawnUnavailable
from httprunner.store import MemoryJobStore, QueueFull

from .fakes import FakeProcessReactor, result_of


@pytest.fixture(autouse=True)
def close_fake_pipes(monkeypatch: Any) -> Any:
    from . import fakes

    pipes: list[Any] = []
    original = fakes.FakePipe.__init__

    def remember(self: Any) -> None:
        original(self)
        pipes.append(self)

    monkeypatch.setattr(fakes.FakePipe, "__init__", remember)
    yield
    for pipe in pipes:
        pipe.close()


@pytest.fixture
def program(tmp_path: Any) -> str:
    path = tmp_path / "prog"
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


class Harness:
    def __init__(self, program: str, **settings: Any) -> None:
        self.reactor = FakeProcessReactor()
        self.kills: list[tuple[int, int]] = []
        self.store = MemoryJobStore(settings.pop("max_jobs", 100))
        ids = iter("%040x" % i for i in range(1, 10_000))
        self.runner = JobRunner(
            reactor=self.reactor,
            store=self.store,
            settings=Settings(**settings),
            spawn=self.reactor.spawnProcess,
            make_id=lambda: next(ids),
            monotonic=self.reactor.seconds,
            walltime=lambda: 1_700_000_000.0 + self.reactor.seconds(),
            killpg=lambda pid, sig: self.kills.append((pid, sig)),
        )
        self.program = program

    def submit(self, **fields: Any) -> jobs.Job:
        spec = JobSpec(
            command=fields.pop("command", "prog"),
            arguments=fields.pop("arguments", []),
            program=fields.pop("program", self.program),
            args=tuple(fields.pop("args", ())),
            env=fields.pop("env", {"PATH": "/usr/bin"}),
            **fields,
        )
        return result_of(self.runner.submit(spec))

    def transport(self, job: jobs.Job) -> Any:
        return next(t for t in self.reactor.spawned if t.pid == job.pid)

    def exit(self, job: jobs.Job, code: int = 0, sig: int | None = None) -> None:
        proto = self.transport(job).proto
        reason = ProcessDone(0) if code == 0 and sig is None else ProcessTerminated(code if sig is None else None, sig)
        proto.processExited(Failure(reason))
        proto.processEnded(Failure(reason))


def test_fakes_implement_twisted_interfaces(program: str) -> None:
    h = Harness(program)
    verifyObject(IReactorProcess, h.reactor)
    job = h.submit()
    verifyObject(IProcessTransport, h.transport(job))


def test_job_runs_in_its_own_session_with_explicit_env(program: str) -> None:
    h = Harness(program)
    job = h.submit(args=["a b", "c"], env={"PATH": "/usr/bin", "LANG": "C.UTF-8"})
    t = h.transport(job)
    assert t.args == [program, "a b", "c"]
    assert t.env == {"PATH": "/usr/bin", "LANG": "C.UTF-8", "HTTPRUNNER_JOB_ID": job.id}
    assert t.stdin_closed, "stdin must be closed at once"
    assert job.state == jobs.RUNNING and job.pid == t.pid and job.code is None


def test_stdin_is_written_then_closed(program: str) -> None:
    h = Harness(program)
    job = h.submit(stdin=b"hello\n")
    t = h.transport(job)
    assert t.written == [b"hello\n"] and t.stdin_closed


@pytest.mark.parametrize(
    "code, sig, state, expected_code, err_code",
    [
        (0, None, jobs.SUCCEEDED, 0, None),
        (1, None, jobs.FAILED, 1, None),
        (42, None, jobs.FAILED, 42, None),
        (255, None, jobs.FAILED, 255, None),
        (0, signal.SIGKILL, jobs.FAILED, 137, "SIGNAL"),
    ],
)
def test_exit_status_maps_to_state_and_code(
    program: str, code: int, sig: Any, state: str, expected_code: int, err_code: Any
) -> None:
    h = Harness(program)
    job = h.submit()
    h.reactor.advance(0.25)
    h.exit(job, code, sig)
    assert job.state == state and job.code == expected_code
    assert (job.err or {}).get("code") == err_code
    assert job.signal == (None if sig is None else "SIGKILL")
    assert job.duration == pytest.approx(0.25)
    assert h.reactor.getDelayedCalls() == []


def test_missing_and_non_executable_programs_fail_to_spawn(program: str, tmp_path: Any) -> None:
    h = Harness(program)
    missing = h.submit(program="/fake/bin/nothing-here")
    assert (missing.state, missing.code, missing.err["code"]) == (jobs.SPAWN_FAILED, 127, "ENOENT")
    plain = tmp_path / "plain"
    plain.write_text("x")
    denied = h.submit(program=str(plain))
    assert (denied.state, denied.code, denied.err["code"]) == (jobs.SPAWN_FAILED, 126, "EACCES")
    not_on_path = h.submit(program="no-such-program-xyz", env={"PATH": str(tmp_path)})
    assert not_on_path.code == 127
    assert h.reactor.spawned == []
    assert missing.pid is None and missing.started_at is None and missing.finished_at is not None


def test_bare_name_is_looked_up_on_the_jobs_path(program: str, tmp_path: Any) -> None:
    h = Harness(program)
    job = h.submit(program="prog", env={"PATH": "/nonexistent:" + str(tmp_path)})
    assert h.transport(job).args[0] == program


def test_exhausted_machine_is_a_503_and_the_job_is_not_kept(program: str) -> None:
    h = Harness(program)
    h.reactor.spawn_error = OSError(errno.EAGAIN, "Resource temporarily unavailable")
    with pytest.raises(SpawnUnavailable):
        h.submit()
    assert len(h.store) == 0


def test_e2big_at_spawn_is_a_spawn_failure(program: str) -> None:
    h = Harness(program)
    h.reactor.spawn_error = OSError(errno.E2BIG, "Argument list too long")
    job = h.submit()
    assert job.state == jobs.SPAWN_FAILED and job.err["code"] == "E2BIG"


def test_timeout_terms_the_group_then_kills_after_grace(program: str) -> None:
    h = Harness(program, kill_grace=5.0)
    job = h.submit(timeout=10.0)
    h.reactor.advance(9.9)
    assert h.kills == []
    h.reactor.advance(0.2)
    assert h.kills == [(job.pid, signal.SIGTERM)]
    h.reactor.advance(5.0)
    assert h.kills[-1] == (job.pid, signal.SIGKILL)
    h.exit(job, sig=signal.SIGKILL)
    assert job.state == jobs.TIMED_OUT and job.err["code"] == "TIMEOUT" and job.code == 137
    assert h.reactor.getDelayedCalls() == []


def test_job_that_exits_on_term_gets_no_kill_timer_left(program: str) -> None:
    h = Harness(program, kill_grace=5.0)
    job = h.submit(timeout=1.0)
    h.reactor.advance(1.0)
    h.exit(job, sig=signal.SIGTERM)
    assert job.state == jobs.TIMED_OUT and job.code == 143 and job.signal == "SIGTERM"
    # stragglers of the group (grandchildren that ignored TERM) are killed
    assert h.kills == [(job.pid, signal.SIGTERM), (job.pid, signal.SIGKILL)]
    assert h.reactor.getDelayedCalls() == []


def test_cancel_running_job(program: str) -> None:
    h = Harness(program, kill_grace=0.0)
    job = h.submit()
    assert h.runner.cancel(job) is True
    assert h.kills == [(job.pid, signal.SIGKILL)]
    h.exit(job, sig=signal.SIGKILL)
    assert job.state == jobs.CANCELED and job.err["code"] == "CANCELED"
    assert h.runner.cancel(job) is False


def test_queue_is_fifo_and_full_queue_refuses(program: str) -> None:
    h = Harness(program, max_running=1, max_queued=2)
    first = h.submit()
    second = h.submit()
    third = h.submit()
    assert (second.state, third.state) == (jobs.QUEUED, jobs.QUEUED)
    with pytest.raises(QueueFull):
        h.submit()
    h.exit(first)
    assert second.state == jobs.RUNNING and third.state == jobs.QUEUED
    h.exit(second)
    assert third.state == jobs.RUNNING


def test_cancel_queued_job_never_starts(program: str) -> None:
    h = Harness(program, max_running=1)
    first = h.submit()
    queued = h.submit()
    h.runner.cancel(queued)
    assert (queued.state, queued.code, queued.pid, queued.started_at) == (jobs.CANCELED, 143, None, None)
    h.exit(first)
    assert len(h.reactor.spawned) == 1


def test_per_rule_limit_lets_other_commands_pass(program: str) -> None:
    h = Harness(program, max_running=4)
    a1 = h.submit(rule="a", rule_limit=1)
    a2 = h.submit(rule="a", rule_limit=1)
    b1 = h.submit(rule="b", rule_limit=1)
    assert (a1.state, a2.state, b1.state) == (jobs.RUNNING, jobs.QUEUED, jobs.RUNNING)
    h.exit(a1)
    assert a2.state == jobs.RUNNING


def test_running_jobs_are_never_evicted(program: str) -> None:
    h = Harness(program, max_jobs=2)
    running = h.submit()
    done = []
    for _ in range(5):
        j = h.submit()
        h.exit(j)
        done.append(j)
    assert result_of(h.store.get(running.id)) is running
    assert [j.id for j in done if result_of(h.store.get(j.id))] == [done[-2].id, done[-1].id]


def test_output_past_cap_is_drained_by_ticks_instead_of_twisteds_reader(program: str) -> None:
    h = Harness(program, max_output=100, throttle_interval=0.05)
    job = h.submit()
    t = h.transport(job)
    t.proto.childDataReceived(1, b"x" * 60)
    assert t.pipes[1].reading
    t.proto.childDataReceived(1, b"y" * 60)
    assert job.stdout.dropped == 20 and not t.pipes[1].reading
    assert t.pipes[2].reading, "only the flooding stream is throttled"
    # what the job writes meanwhile waits in the pipe until the drain's tick
    os.write(t.pipes[1].writer, b"z" * 5000)
    assert job.stdout.total == 120
    h.reactor.advance(DRAIN_MIN_INTERVAL)
    assert job.stdout.total == 5120 and job.stdout.text().endswith("z" * 50)
    assert not t.pipes[1].reading
    # a kill hands the pipe back to Twisted first, or the job could never end
    h.runner.cancel(job)
    assert t.pipes[1].reading
    h.exit(job, sig=signal.SIGTERM)
    assert h.reactor.getDelayedCalls() == []


def test_throttled_pipe_at_end_of_file_is_handed_back(program: str) -> None:
    h = Harness(program, max_output=10, throttle_interval=0.05)
    job = h.submit()
    t = h.transport(job)
    t.proto.childDataReceived(1, b"x" * 20)
    os.write(t.pipes[1].writer, b"tail")
    os.close(t.pipes[1].writer)
    t.pipes[1].writer = os.open(os.devnull, os.O_WRONLY)
    h.reactor.advance(DRAIN_MIN_INTERVAL)
    assert job.stdout.text().endswith("xtail") and not t.pipes[1].reading
    h.reactor.advance(0.05)  # the next tick reads the end of file
    assert t.pipes[1].reading
    h.exit(job)


def test_on_output_limit_kill_ends_the_job(program: str) -> None:
    h = Harness(program, max_output=10, kill_on_output_limit=True, kill_grace=0.0)
    job = h.submit()
    h.transport(job).proto.childDataReceived(2, b"e" * 11)
    assert h.kills == [(job.pid, signal.SIGKILL)]
    h.exit(job, sig=signal.SIGKILL)
    assert job.state == jobs.FAILED and job.err["code"] == "OUTPUT_LIMIT"


def test_job_ends_at_main_exit_plus_bounded_drain(program: str) -> None:
    h = Harness(program, drain_timeout=0.5)
    job = h.submit()
    t = h.transport(job)
    # the main process exits but a grandchild keeps the pipes open:
    # processEnded does not come
    t.proto.processExited(Failure(ProcessDone(0)))
    assert job.state == jobs.RUNNING
    h.reactor.advance(0.5)
    assert t.lost, "the pipes are closed once the drain time is over"
    t.proto.processEnded(Failure(ProcessDone(0)))  # which Twisted follows with
    assert job.state == jobs.SUCCEEDED
    assert h.reactor.getDelayedCalls() == []


def test_shutdown_cancels_queue_and_terminates_running(program: str) -> None:
    h = Harness(program, max_running=1, kill_grace=5.0)
    running = h.submit()
    queued = h.submit()
    d = h.runner.stopService()
    assert queued.state == jobs.CANCELED
    assert h.kills == [(running.pid, signal.SIGTERM)]
    assert not d.called
    with pytest.raises(ShuttingDown):
        h.submit()
    h.reactor.advance(5.0)
    assert h.kills[-1] == (running.pid, signal.SIGKILL)
    h.exit(running, sig=signal.SIGKILL)
    assert d.called and running.state == jobs.CANCELED
    assert h.reactor.getDelayedCalls() == []


def test_long_poll_waiters_each_get_their_own_deferred(program: str) -> None:
    h = Harness(program)
    job = h.submit()
    first = h.runner.when_finished(job)
    second = h.runner.when_finished(job)
    first.cancel()  # a client that hung up
    first.addErrback(lambda f: None)
    results: list[Any] = []
    second.addCallback(results.append)
    h.exit(job)
    assert results == [job]


def test_request_fields_are_released_when_the_job_ends(program: str) -> None:
    h = Harness(program)
    job = h.submit(env={"PATH": "/usr/bin", "SECRET": "x"}, stdin=b"data")
    h.exit(job)
    assert job.launch is None


def test_job_events_carry_stable_fields_and_cannot_be_forged(program: str) -> None:
    from twisted.logger import capturedLogs, formatEvent

    h = Harness(program)
    with capturedLogs() as events:
        job = h.submit(args=["a\nFORGED LINE"])
        h.exit(job, 3)
        h.submit(program="evil\nFORGED\x1b[2J")
    started = next(e for e in events if e["log_format"].startswith("job {job_id} started"))
    ended = next(e for e in events if e["log_format"].startswith("job {job_id} ended"))
    failed = next(e for e in events if "could not start" in e["log_format"])
    assert started["job_id"] == job.id and started["pid"] == job.pid and started["argv"][1] == "a\nFORGED LINE"
    assert (ended["code"], ended["state"], ended["duration"]) == (3, "failed", 0.0)
    for event in (started, ended, failed):
        text = formatEvent(event)
        assert "\n" not in text and "\x1b" not in text


class CommitLaterStore(MemoryJobStore):
    """The memory store made durable, whose admissions commit when the test
    says so (as the SQLite store's writer thread does, a moment later)."""

    durable = True

    def __init__(self) -> None:
        super().__init__(100)
        #: hold admissions until the test fires them
        self.hold = False
        self.commits: list[tuple[bool, Deferred[None]]] = []

    def admit(self, job: jobs.Job, starting: bool = False) -> Deferred[None]:
        done = super().admit(job, starting)
        if not self.hold:
            return done
        d: Deferred[None] = Deferred()
        self.commits.append((starting, d))
        return d


@pytest.mark.parametrize("starting", [True, False])
def test_a_job_whose_admission_commits_while_a_durable_daemon_stops(program: str, starting: bool) -> None:
    """A job recorded as starting must not be left "running" (the next start
    would declare it lost though it never ran): it ends canceled. A job
    recorded queued stays queued for the next start."""
    h = Harness(program, max_running=1)
    h.runner.store = h.store = store = CommitLaterStore()
    h.runner.startService()
    if not starting:
        h.submit()  # takes the only slot
    store.hold = True
    spec = JobSpec(command="prog", arguments=[], program=program, args=(), env={"PATH": "/usr/bin"})
    submitted = h.runner.submit(spec)
    assert [s for s, _ in store.commits] == [starting]
    stopping = h.runner.stopService()
    store.commits[0][1].callback(None)
    job = result_of(submitted)
    assert job.pid is None and len(h.reactor.spawned) == (0 if starting else 1)
    if starting:
        assert job.state == jobs.CANCELED and job.err == {
            "code": "CANCELED",
            "message": "the daemon shut down before it started",
        }
        assert result_of(store.get(job.id)) is job and job.finished_at is not None
    else:
        assert job.state == jobs.QUEUED and job.finished_at is None
    for transport in h.reactor.spawned:
        h.exit(transport.proto.job, sig=signal.SIGTERM)
    assert stopping.called


class SlowDurableStore(MemoryJobStore):
    """A durable store whose 'starting' records are committed by hand."""

    durable = True

    def __init__(self) -> None:
        super().__init__(100)
        self.marking: list[tuple[str, Any]] = []
        self.requeued: list[str] = []

    def starting(self, job: jobs.Job) -> Any:
        from twisted.internet.defer import Deferred

        d: Deferred[None] = Deferred()
        self.marking.append((job.id, d))
        return d

    def requeue(self, job: jobs.Job) -> None:
        self.requeued.append(job.id)


def durable_harness(program: str) -> Harness:
    h = Harness(program, max_running=1)
    h.store = h.runner.store = SlowDurableStore()  # type: ignore[misc]
    return h


def test_a_queued_job_of_a_durable_store_spawns_only_once_its_start_is_recorded(program: str) -> None:
    # A crash after the spawn must leave the job lost, never queued to run
    # a second time: the store records "starting" first.
    h = durable_harness(program)
    first = h.submit()
    queued = h.submit()
    h.exit(first)
    assert queued.state == jobs.QUEUED and len(h.reactor.spawned) == 1
    job_id, recorded = h.store.marking[0]
    assert job_id == queued.id
    assert h.submit().state == jobs.QUEUED  # the slot is held meanwhile
    recorded.callback(None)
    assert queued.state == jobs.RUNNING and len(h.reactor.spawned) == 2


def test_a_job_canceled_while_its_start_is_recorded_never_spawns(program: str) -> None:
    h = durable_harness(program)
    first = h.submit()
    queued = h.submit()
    h.exit(first)
    assert h.runner.cancel(queued) is True
    h.store.marking[0][1].callback(None)
    assert queued.state == jobs.CANCELED and len(h.reactor.spawned) == 1


def test_a_daemon_stopping_while_a_start_is_recorded_puts_the_job_back_in_the_queue(program: str) -> None:
    h = durable_harness(program)
    first = h.submit()
    queued = h.submit()
    h.exit(first)
    stopped = h.runner.stopService()
    h.store.marking[0][1].callback(None)
    result_of(stopped)
    assert h.store.requeued == [queued.id] and len(h.reactor.spawned) == 1
    assert queued.state == jobs.QUEUED
