"""Unit tests of the drain of a stream past its cap (JobProcessProtocol).

The job's side is a real pipe (``FakePipe``) the test writes into; time is
a ``Clock``; the daemon's CPU time is a counter that the fake runner
(``ChargingEvents``) advances for every chunk the drain hands over, so the
CPU budget can be checked without depending on the machine's speed.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.error import ProcessDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from httprunner.jobs import Job, JobSpec
from httprunner.process import (
    DRAIN_BURST_CPU,
    DRAIN_CPU_SHARE,
    DRAIN_MIN_INTERVAL,
    DRAIN_READ_SIZE,
    ExitStatus,
    JobProcessProtocol,
)

from .fakes import FakeProcessTransport

CAP = 1000
THROTTLE_INTERVAL = 0.05


class ChargingEvents:
    """The runner's side; each chunk of output costs ``cost`` CPU seconds."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.cost = 0.0
        self.chunks: list[int] = []
        self.ended: list[ExitStatus] = []

    def process_output(self, job: Job, fd: int) -> None:
        self.cpu += self.cost
        self.chunks.append(fd)

    def process_over_cap(self, job: Job) -> None:
        pass

    def process_ended(self, job: Job, status: ExitStatus) -> None:
        self.ended.append(status)


class Setup:
    def __init__(self) -> None:
        spec = JobSpec(command="prog", arguments=[], program="/fake/bin/prog", args=(), env={})
        self.job = Job(job_id="a" * 40, spec=spec, created_at=0.0, max_output=CAP)
        self.clock = Clock()
        self.events = ChargingEvents()
        self.kills: list[tuple[int, int]] = []
        self.protocol = JobProcessProtocol(
            self.job,
            self.events,
            self.clock,
            throttle_interval=THROTTLE_INTERVAL,
            killpg=lambda pid, sig: self.kills.append((pid, sig)),
            cpu_clock=lambda: self.events.cpu,
        )
        self.transport = FakeProcessTransport(self.protocol, 4242, ["/fake/bin/prog"], {}, None)
        self.protocol.makeConnection(self.transport)
        self.pipe = self.transport.pipes[1]
        os.set_blocking(self.pipe.writer, False)
        self.written = CAP + 1

    def pass_the_cap(self) -> None:
        self.protocol.childDataReceived(1, b"h" * (CAP + 1))

    def fill(self) -> int:
        """Write into the job's stdout until the pipe is full, as a flood does."""
        added = 0
        chunk = b"y" * 65536
        while True:
            try:
                n = os.write(self.pipe.writer, chunk)
            except BlockingIOError:
                break
            added += n
        self.written += added
        return added

    def write(self, data: bytes) -> None:
        os.write(self.pipe.writer, data)
        self.written += len(data)

    def next_tick(self) -> float:
        """Advance the clock to the drain's next tick; return the wait."""
        [call] = self.clock.getDelayedCalls()
        wait = call.getTime() - self.clock.seconds()
        self.clock.advance(wait)
        return wait

    def close(self) -> None:
        self.pipe.close()
        self.transport.pipes[2].close()


@pytest.fixture
def setup() -> Iterator[Setup]:
    s = Setup()
    yield s
    s.close()


def test_past_the_cap_the_drain_reads_that_pipe_in_place_of_twisted(setup: Setup) -> None:
    setup.pass_the_cap()
    assert not setup.pipe.reading and setup.transport.pipes[2].reading
    setup.write(b"z" * 5000)
    assert setup.job.stdout.total == CAP + 1  # waits for the tick
    assert setup.next_tick() == pytest.approx(DRAIN_MIN_INTERVAL)
    assert setup.job.stdout.total == setup.written and setup.job.stdout.text().endswith("z" * 100)


def test_a_burst_follows_the_writer_then_a_flood_costs_a_bounded_share(setup: Setup) -> None:
    setup.pass_the_cap()
    if setup.fill() < DRAIN_READ_SIZE:
        pytest.skip("the pipe cannot be grown to DRAIN_READ_SIZE here (pipe-max-size)")
    setup.events.cost = DRAIN_BURST_CPU / 20  # each chunk (a full pipe) costs a twentieth of the burst
    waits = []
    for _ in range(200):
        setup.fill()
        waits.append(setup.next_tick())
        # everything the pipe held was read: the tail is current
        assert setup.job.stdout.total == setup.written
    burst = [w for w in waits if w == pytest.approx(DRAIN_MIN_INTERVAL)]
    # the burst: back to back ticks while the budget lasts
    assert waits[: len(burst)] == burst and 19 <= len(burst) <= 21
    # then the flood is held to the share: CPU over time, after the burst
    elapsed = sum(waits)
    assert setup.events.cpu <= DRAIN_BURST_CPU + elapsed * DRAIN_CPU_SHARE + setup.events.cost
    assert setup.events.cpu >= DRAIN_BURST_CPU + (elapsed - sum(burst)) * DRAIN_CPU_SHARE * 0.9
    assert max(waits) <= setup.events.cost / DRAIN_CPU_SHARE + DRAIN_MIN_INTERVAL


def test_a_slow_writer_is_read_within_the_throttle_interval_and_costs_no_budget(setup: Setup) -> None:
    setup.pass_the_cap()
    setup.events.cost = DRAIN_BURST_CPU  # any chunk would empty the budget...
    waits = []
    for i in range(40):
        setup.write(b"%04d" % i * 512)  # 2 KiB, far from filling the pipe
        waits.append(setup.next_tick())
        assert setup.job.stdout.total == setup.written, "read at the next tick: never slowed"
    # ...and still the ticks only space out, up to the throttle interval
    assert waits[:6] == pytest.approx([0.001, 0.002, 0.004, 0.008, 0.016, 0.032])
    assert waits[6:] == pytest.approx([THROTTLE_INTERVAL] * 34)
    assert setup.job.stdout.text().endswith("0039" * 100)


def test_the_budget_comes_back_while_the_job_writes_less(setup: Setup) -> None:
    setup.pass_the_cap()
    if setup.fill() < DRAIN_READ_SIZE:
        pytest.skip("the pipe cannot be grown to DRAIN_READ_SIZE here (pipe-max-size)")
    setup.events.cost = DRAIN_BURST_CPU / 4
    for _ in range(12):  # burst spent, then held to the share
        setup.fill()
        setup.next_tick()
    assert setup.next_tick() > DRAIN_MIN_INTERVAL
    # quiet long enough to earn the whole burst back
    quiet = DRAIN_BURST_CPU / DRAIN_CPU_SHARE + 1
    while quiet > 0:
        quiet -= setup.next_tick()
    setup.fill()
    assert setup.next_tick() == pytest.approx(THROTTLE_INTERVAL)  # the quiet pipe's wait
    setup.fill()
    assert setup.next_tick() == pytest.approx(DRAIN_MIN_INTERVAL), "a new burst follows the writer again"


def test_end_of_file_hands_the_pipe_back(setup: Setup) -> None:
    setup.pass_the_cap()
    setup.write(b"tail")
    os.close(setup.pipe.writer)
    setup.pipe.writer = os.open(os.devnull, os.O_WRONLY)
    setup.next_tick()
    assert setup.job.stdout.text().endswith("tail") and not setup.pipe.reading
    setup.next_tick()  # reads the end of file
    assert setup.pipe.reading and setup.clock.getDelayedCalls() == []


def test_a_kill_resumes_the_pipe_first_and_the_end_leaves_no_timer(setup: Setup) -> None:
    setup.pass_the_cap()
    setup.fill()
    setup.protocol.signal_group(signal.SIGTERM)
    assert setup.pipe.reading and setup.kills == [(4242, signal.SIGTERM)]
    assert setup.clock.getDelayedCalls() == []
    setup.protocol.processExited(Failure(ProcessDone(0)))
    setup.protocol.processEnded(Failure(ProcessDone(0)))
    assert setup.clock.getDelayedCalls() == [] and len(setup.events.ended) == 1


def test_the_exit_hands_a_throttled_pipe_back(setup: Setup) -> None:
    setup.pass_the_cap()
    setup.protocol.processExited(Failure(ProcessDone(0)))
    assert setup.pipe.reading
    [drain_timeout] = setup.clock.getDelayedCalls()  # only the bounded drain after the exit
    setup.protocol.processEnded(Failure(ProcessDone(0)))
    assert not drain_timeout.active() and setup.clock.getDelayedCalls() == []


def test_a_kill_on_the_limit_during_a_tick_stops_the_tick(setup: Setup, monkeypatch: Any) -> None:
    setup.pass_the_cap()

    def kill_at_cap(job: Job) -> None:  # --on-output-limit kill, reached inside a tick
        setup.protocol.signal_group(signal.SIGKILL)

    monkeypatch.setattr(setup.events, "process_over_cap", kill_at_cap)
    setup.write(b"more")
    setup.next_tick()
    assert setup.pipe.reading and setup.clock.getDelayedCalls() == []
    assert setup.kills == [(4242, signal.SIGKILL)]


def test_a_vanished_process_group_is_not_an_error(setup: Setup) -> None:
    def gone(pid: int, sig: int) -> None:
        raise ProcessLookupError(errno.ESRCH, "No such process")

    setup.protocol.killpg = gone
    setup.protocol.signal_group(signal.SIGTERM)
