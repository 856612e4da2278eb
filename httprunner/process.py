"""The ProcessProtocol collector of one job: pipes -> buffers, exit -> status.

It owns everything that touches the running process: spawning it as a
session leader, writing and closing stdin, collecting both streams into the
job's capped buffers, draining a stream that floods past its cap at a
bounded cost, signalling the job's process group, ending the job when its
main process exits (plus a bounded drain), and keeping what the process
cost (``wait4``).  It reports to the runner through the small
:class:`ProcessEvents` protocol.
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

from twisted.internet import process as twisted_process
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IReactorFDSet, IReactorTime
from twisted.internet.process import Process
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from httprunner.jobs import Job

ExitStatus = ProcessDone | ProcessTerminated

#: fcntl.F_SETPIPE_SZ (Linux); the throttled drain enlarges the pipe to this
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

# The drain of a stream past its cap (see JobProcessProtocol._drain_tick).
#: one read: also the size the pipe is grown to (the most an unprivileged
#: process may ask for by default, /proc/sys/fs/pipe-max-size)
DRAIN_READ_SIZE = 1 << 20
#: the most one tick reads, so that a tick never holds the reactor long
DRAIN_TICK_BYTES = 8 << 20
#: CPU seconds a stream past its cap may spend at full speed (about 200 MB
#: on a current machine) before it is held to DRAIN_CPU_SHARE; the
#: allowance comes back at that share while the job writes less
DRAIN_BURST_CPU = 0.1
#: the share of a core a stream that keeps flooding may cost after that
DRAIN_CPU_SHARE = 0.02
#: the shortest wait between two ticks while the writer keeps the pipe full
DRAIN_MIN_INTERVAL = 0.001


class SessionProcess(Process):
    """A Twisted ``Process`` whose child leads its own session and group.

    Timeout, cancel and shutdown signal the job's whole process group, so
    each job must lead one.  Twisted spawns with ``posix_spawnp`` unless a
    working directory (or uid/gid) is given, and then forks:

    - on the ``posix_spawnp`` path the child gets ``POSIX_SPAWN_SETSID``,
      and only the three pipes need file actions: every descriptor Python
      opens is close-on-exec (PEP 446), and :func:`close_on_exec_all`
      makes the ones inherited at startup so.  Twisted's own version lists
      ``/proc/self/fd``, ``fcntl``s each descriptor and reads every
      signal's disposition on every spawn, which was half the cost of
      starting a job;
    - on the fork path the child calls ``setsid()`` before ``exec``.

    Both rely on two private methods of Twisted's ``Process``; the
    integration tests check on both paths that a job leads its session.

    It also reaps its child with ``os.wait4`` instead of ``os.waitpid``
    and keeps the resource usage (``rusage``: CPU time and peak RSS of the
    child and of the children it waited for), which ``waitpid`` throws
    away.  Twisted reaps in two places: ``reapProcess`` (on SIGCHLD, and
    when the pipes close) and ``registerReapProcessHandler`` right after
    the spawn, which reaps a child that already exited (a fifth of
    ``/bin/true`` jobs on a busy machine); both go through :meth:`_wait4`.

    Linux counts the spawning process's peak RSS in the child's
    ``ru_maxrss``: ``exec`` records the resident size of the memory the
    child leaves (the daemon's, shared with a vfork child or copied by a
    fork).  ``spawner_rss_kib`` is that floor, read when spawning: a
    ``ru_maxrss`` above it is the job's own peak, one at or below it only
    says the job stayed under the daemon's size.
    """

    #: the child's ``os.wait4`` resource usage once it is reaped
    rusage: resource.struct_rusage | None = None
    #: the daemon's peak RSS (KiB) when it spawned the child (see above)
    spawner_rss_kib = 0

    # Twisted leaves these private methods unannotated; the types are what
    # Process.__init__ and Process._fork pass (tests/test_private_api.py
    # checks the signatures).
    def _fork(
        self,
        path: str | None,
        uid: int | None,
        gid: int | None,
        executable: str,
        args: list[str],
        environment: Mapping[str, str],
        **kwargs: Any,
    ) -> None:
        # Before spawning: the daemon's peak cannot grow while a vfork
        # child runs, and a fork child starts from at most this size.
        self.spawner_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        super()._fork(path, uid, gid, executable, args, environment, **kwargs)

    def _trySpawnInsteadOfFork(
        self,
        path: str | None,
        uid: int | None,
        gid: int | None,
        executable: str,
        args: list[str],
        environment: Mapping[str, str],
        kwargs: dict[str, Any],
    ) -> bool:
        fdmap: dict[int, int] = kwargs["fdmap"]
        if (
            uid is not None
            or gid is not None
            or (path is not None and os.path.abspath(path) != os.path.abspath("."))
            # a pipe landed on 0-2 (the daemon had them closed): let the
            # fork path's general descriptor shuffle handle it
            or any(parent in fdmap for parent in fdmap.values())
        ):
            return False
        self.pid = os.posix_spawnp(
            executable,
            args,
            environment,
            file_actions=[(os.POSIX_SPAWN_DUP2, parent, child) for child, parent in fdmap.items()],
            setsigdef=_ignored_signals(),
            setsid=True,
        )
        self.status = -1
        return True

    def _execChild(
        self,
        path: str | None,
        uid: int | None,
        gid: int | None,
        executable: str,
        args: list[str],
        environment: Mapping[str, str],
    ) -> None:
        os.setsid()
        super()._execChild(path, uid, gid, executable, args, environment)

    def _wait4(self, pid: int) -> tuple[int, int] | None:
        """``os.waitpid(pid, WNOHANG)`` as Twisted calls it, through
        ``os.wait4``: ``(pid, status)`` once reaped (``rusage`` is then
        set), None while the child runs.  Raises as ``waitpid`` would."""
        reaped, status, rusage = os.wait4(pid, os.WNOHANG)
        if not reaped:
            return None
        self.rusage = rusage
        return reaped, status

    def reapProcess(self) -> None:
        """Twisted's ``_BaseProcess.reapProcess``, with :meth:`_wait4`."""
        try:
            try:
                # self.pid is None once reaped, which raises as in Twisted
                reaped = self._wait4(self.pid)  # type: ignore[arg-type]
            except OSError as e:
                if e.errno == errno.ECHILD:
                    # no child process
                    reaped = None
                else:
                    raise
        except BaseException:
            legacy_log.msg(f"Failed to reap {self.pid}:")
            legacy_log.err()
            reaped = None
        if reaped:
            pid, status = reaped
            twisted_process.unregisterReapProcessHandler(pid, self)
            self.processEnded(status)

    def _register_reap(self, pid: int) -> None:
        """Twisted's ``registerReapProcessHandler(pid, self)``, with :meth:`_wait4`."""
        if pid in twisted_process.reapProcessHandlers:
            raise RuntimeError("Try to register an already registered process.")
        try:
            reaped = self._wait4(pid)
        except BaseException:
            legacy_log.msg(f"Failed to reap {pid}:")
            legacy_log.err()
            reaped = None
        if reaped:
            self.processEnded(reaped[1])
        else:
            # the child runs: reapProcess will reap it
            twisted_process.reapProcessHandlers[pid] = self


_twisted_register_reap = twisted_process.registerReapProcessHandler


def _register_reap_handler(pid: int, process: Any) -> None:
    """What ``Process.__init__`` calls after a spawn: :class:`SessionProcess`
    registers through wait4, any other process as Twisted does."""
    if isinstance(process, SessionProcess):
        process._register_reap(pid)
    else:
        _twisted_register_reap(pid, process)


# Process.__init__ looks the function up in its module on every spawn.
twisted_process.registerReapProcessHandler = _register_reap_handler


def spawn_session(
    reactor: IReactorFDSet,
    protocol: ProcessProtocol,
    executable: str,
    args: list[str],
    env: dict[str, str],
    path: str | None,
) -> IProcessTransport:
    """Spawn ``executable`` as the leader of a new session (see SessionProcess).

    A job given no stdin text reads ``/dev/null``: end of file at once, as
    from the closed pipe it would otherwise get, without creating that
    pipe, its writer, its reactor registration and their teardown.
    """
    stdin: int | str = "w" if getattr(protocol, "wants_stdin", True) else _devnull()
    return SessionProcess(reactor, executable, args, env, path, protocol, childFDs={0: stdin, 1: "r", 2: "r"})


_DEVNULL: int | None = None


def _devnull() -> int:
    """A descriptor on /dev/null for the jobs' stdin, opened once (close-on-exec,
    above 2 so that it never collides with a pipe mapped to 0-2)."""
    global _DEVNULL
    if _DEVNULL is None:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if fd <= 2:
            high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(fd)
            fd = high
        _DEVNULL = fd
    return _DEVNULL


_IGNORED_SIGNALS: list[int] | None = None


def _ignored_signals() -> list[int]:
    """Signals the daemon ignores, to reset in the child (Python ignores
    SIGPIPE and SIGXFSZ; an ignored disposition survives exec).  Read once:
    the daemon does not change them after startup."""
    global _IGNORED_SIGNALS
    if _IGNORED_SIGNALS is None:
        _IGNORED_SIGNALS = [s for s in range(1, signal.NSIG) if signal.getsignal(s) == signal.SIG_IGN]
    return _IGNORED_SIGNALS


def close_on_exec_all() -> None:
    """Mark every open descriptor above 2 close-on-exec.

    Descriptors Python opens already are; this catches the ones inherited
    at startup (systemd's listening sockets, a parent's leaks), so no job
    inherits them.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own descriptor, already closed


class ProcessEvents(Protocol):
    """What the runner hears from a job's process."""

    def process_output(self, job: Job, fd: int) -> None: ...

    def process_over_cap(self, job: Job) -> None: ...

    def process_ended(self, job: Job, status: ExitStatus) -> None: ...


class ProcessPipe(Protocol):
    """The part of Twisted's ``ProcessReader`` the throttled drain uses."""

    def fileno(self) -> int: ...

    def startReading(self) -> None: ...

    def stopReading(self) -> None: ...


class PipedProcessTransport(Protocol):
    """A process transport with Twisted's ``Process.pipes`` (child fd ->
    reader/writer): public in ``Process`` but not part of ``IProcessTransport``."""

    @property
    def pipes(self) -> Mapping[int, ProcessPipe]: ...


def _exit_status(reason: Failure) -> ExitStatus:
    """The status inside a process's exit ``reason`` (always one of the
    two, even for exit 0)."""
    status = reason.value
    assert isinstance(status, ProcessDone | ProcessTerminated), reason
    return status


class JobProcessProtocol(ProcessProtocol):
    """Collect one job's output and exit status.

    Twisted only calls ``processEnded`` once the process is reaped *and*
    every pipe is closed, so a background grandchild holding stdout would
    keep the job running forever.  The job ends instead at the main
    process's exit (``processExited``) plus at most ``drain_timeout``
    seconds for the pipes to empty; after that they are closed.
    """

    log = Logger()

    #: what the job's process cost, from ``wait4`` when it was reaped:
    #: user + system CPU seconds of the process and of the children it
    #: waited for; None until the process is reaped (and for a transport
    #: that does not tell)
    cpu_seconds: float | None = None
    #: the peak resident set size in bytes of the process or of a child it
    #: waited for, when it grew past the daemon's own peak RSS at the
    #: spawn; None below that, where the kernel's figure is the daemon's
    #: size, not the job's (see SessionProcess)
    max_rss_bytes: int | None = None

    def __init__(
        self,
        job: Job,
        events: ProcessEvents,
        clock: IReactorTime,
        *,
        throttle_interval: float = 0.05,
        drain_timeout: float = 0.5,
        killpg: Callable[[int, int], None] = os.killpg,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self.job = job
        self.events = events
        self.clock = clock
        #: the longest wait between two drain ticks of a throttled stream
        self.throttle_interval = throttle_interval
        self.drain_timeout = drain_timeout
        self.killpg = killpg
        #: the reactor thread's CPU time, which the drain budgets
        self.cpu_clock = cpu_clock
        self.pid: int | None = None
        self._exit_status: ExitStatus | None = None
        self._drain: IDelayedCall | None = None
        # fd -> the drain of a stream past its cap
        self._throttled: dict[int, _Drain] = {}

    @property
    def reaped(self) -> bool:
        """True once the main process was reaped: its pid may be reused."""
        return self._exit_status is not None

    # -- Twisted's side ---------------------------------------------------

    @property
    def wants_stdin(self) -> bool:
        """Whether the job has stdin text to write (else it gets /dev/null)."""
        launch = self.job.launch
        return launch is not None and bool(launch.stdin)

    def connectionMade(self) -> None:
        # transport.pid is already None in processExited: keep it now.
        transport = self._process()
        self.pid = transport.pid
        launch = self.job.launch
        if launch is not None and launch.stdin:
            transport.write(launch.stdin)
        # A job that reads stdin sees EOF instead of hanging (a no-op when
        # its stdin is /dev/null).
        transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if self._collect(childFD, data) and self._exit_status is None:
            self._throttle(childFD)

    def _collect(self, fd: int, data: bytes) -> bool:
        """Keep ``data`` in its stream's buffer; True once over the cap."""
        if fd == 1:
            buffer = self.job.stdout
        elif fd == 2:
            buffer = self.job.stderr
        else:
            return False
        buffer.append(data)
        self.events.process_output(self.job, fd)
        if buffer.over_cap:
            self.events.process_over_cap(self.job)
            return True
        return False

    def processExited(self, reason: Failure) -> None:
        self._take_rusage()
        self._exit_status = _exit_status(reason)
        self._resume_all()
        if self.drain_timeout <= 0:
            self._close_pipes()
        else:
            self._drain = self.clock.callLater(self.drain_timeout, self._close_pipes)

    def processEnded(self, reason: Failure) -> None:
        self._take_rusage()
        # reason is a Failure even for exit 0; pass its value on.
        if self._exit_status is None:
            self._exit_status = _exit_status(reason)
        self._end()

    # -- the runner's side ----------------------------------------------

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the job's process group (its session).

        Paused pipes are resumed first: a job blocked writing to a pipe we
        stopped reading would otherwise never see its signal through to an
        exit we can observe.
        """
        self._resume_all()
        if self.pid is None:
            return
        try:
            # The job leads its own session (setsid), so its pgid is its pid.
            self.killpg(self.pid, signum)
        except OSError as e:
            if e.errno not in (errno.ESRCH, errno.EPERM):
                raise

    # -- internals ------------------------------------------------------

    def _process(self) -> IProcessTransport:
        # Twisted sets the transport before connectionMade and never clears it.
        assert self.transport is not None
        return self.transport

    def _pipe(self, fd: int) -> ProcessPipe | None:
        return cast(PipedProcessTransport, self._process()).pipes.get(fd)

    def _take_rusage(self) -> None:
        """Copy what the reaped process cost from the transport (a
        :class:`SessionProcess`) before the runner hears of the exit."""
        if self.cpu_seconds is not None:
            return
        rusage = getattr(self.transport, "rusage", None)
        if rusage is None:
            return
        self.cpu_seconds = rusage.ru_utime + rusage.ru_stime
        # KiB on Linux (bytes on macOS, which records no such floor)
        if sys.platform == "darwin":
            self.max_rss_bytes = rusage.ru_maxrss
        elif rusage.ru_maxrss > getattr(self.transport, "spawner_rss_kib", 0):
            self.max_rss_bytes = rusage.ru_maxrss * 1024

    def _throttle(self, fd: int) -> None:
        """Past the cap, drain the pipe ourselves instead of Twisted's reader.

        Twisted stops reading the pipe (grown to DRAIN_READ_SIZE) and
        :meth:`_drain_tick` reads it instead, in large reads, as often as
        its CPU budget and the writer's pace call for.
        """
        if fd in self._throttled:
            return
        pipe = self._pipe(fd)
        if pipe is None:
            return
        pipe.stopReading()
        try:
            # Fewer, larger reads per tick; refused above pipe-max-size.
            fcntl.fcntl(pipe.fileno(), F_SETPIPE_SZ, DRAIN_READ_SIZE)
        except (OSError, AttributeError, ValueError):
            pass
        drain = _Drain(self.clock.seconds())
        self._throttled[fd] = drain
        drain.call = self.clock.callLater(DRAIN_MIN_INTERVAL, self._drain_tick, fd)

    def _drain_tick(self, fd: int) -> None:
        """Read what a throttled pipe holds; schedule the next tick.

        The drain follows the writer as long as its CPU budget lasts, and
        costs a bounded share of a core when a job floods without end:

        - each tick reads the pipe in DRAIN_READ_SIZE reads until it is
          empty (or DRAIN_TICK_BYTES were read), and its CPU time is taken
          from a budget that holds at most DRAIN_BURST_CPU seconds and
          refills at DRAIN_CPU_SHARE of a core;
        - a pipe found full means the writer was blocked on it: the next
          tick comes after DRAIN_MIN_INTERVAL while the budget lasts, then
          once the budget is back above zero (so a flood costs the share);
        - a pipe found not full means the writer is slower than the drain
          (never slowed): the wait doubles up to ``throttle_interval``,
          which bounds how far the retained tail lags behind the job.
        """
        drain = self._throttled.get(fd)
        if drain is None:
            return
        drain.call = None
        pipe = self._pipe(fd)
        if pipe is None:
            del self._throttled[fd]
            return
        now = self.clock.seconds()
        drain.budget = min(DRAIN_BURST_CPU, drain.budget + (now - drain.refilled_at) * DRAIN_CPU_SHARE)
        drain.refilled_at = now
        started = self.cpu_clock()
        fileno = pipe.fileno()
        got = 0
        full = False
        ended = False
        while got < DRAIN_TICK_BYTES:
            try:
                data = os.read(fileno, DRAIN_READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                ended = True
                break
            if not got and len(data) == DRAIN_READ_SIZE:
                full = True
            got += len(data)
            self._collect(fd, data)
            if self._throttled.get(fd) is not drain:
                return  # a kill in _collect (--on-output-limit kill) resumed the pipe
            if len(data) < DRAIN_READ_SIZE:
                break
        drain.budget -= self.cpu_clock() - started
        if ended or self._exit_status is not None:
            # End of file, or the job exited: Twisted's reader takes over
            # (and sees the end of file, closing the pipe).
            del self._throttled[fd]
            pipe.startReading()
            return
        if full:
            drain.interval = DRAIN_MIN_INTERVAL
            if drain.budget < 0:
                delay = max(DRAIN_MIN_INTERVAL, -drain.budget / DRAIN_CPU_SHARE)
            else:
                delay = DRAIN_MIN_INTERVAL
        else:
            drain.interval = delay = min(self.throttle_interval, drain.interval * 2)
        drain.call = self.clock.callLater(delay, self._drain_tick, fd)

    def _resume_all(self) -> None:
        """Hand every throttled pipe back to Twisted's reader."""
        for fd, drain in list(self._throttled.items()):
            drain.cancel()
            del self._throttled[fd]
            pipe = self._pipe(fd)
            if pipe is not None:
                pipe.startReading()

    def _close_pipes(self) -> None:
        """The drain is over: close our ends of the pipes.

        Twisted then closes the descriptors on its next turn and calls
        ``processEnded`` (the process is already reaped), which ends the
        job with nothing left open.
        """
        self._drain = None
        self._process().loseConnection()

    def _end(self) -> None:
        if self._drain is not None:
            self._drain.cancel()
            self._drain = None
        for drain in self._throttled.values():
            drain.cancel()
        self._throttled.clear()
        assert self._exit_status is not None
        self.events.process_ended(self.job, self._exit_status)


class _Drain:
    """The state of one stream drained past its cap."""

    __slots__ = ("call", "budget", "refilled_at", "interval")

    def __init__(self, now: float) -> None:
        #: the next tick
        self.call: IDelayedCall | None = None
        #: CPU seconds the drain may still spend before it waits
        self.budget = DRAIN_BURST_CPU
        self.refilled_at = now
        #: the wait after the last tick that found the pipe not full
        self.interval = DRAIN_MIN_INTERVAL

    def cancel(self) -> None:
        if self.call is not None:
            self.call.cancel()
            self.call = None
