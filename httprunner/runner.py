"""The JobRunner service: admission, queue, slots, spawn, timeouts, cancel, shutdown.

The runner turns a validated :class:`JobSpec` into a :class:`Job`, runs it
when a slot is free (FIFO, at most ``max_running`` at once, at most
``max_queued`` waiting), and drives it to exactly one terminal state.
Collaborators are injected (the process reactor, the clock, the monotonic
clock, the id source, ``killpg``) so unit tests run without processes or
real time.  Observers hear ``job_started`` and ``job_finished``; per-job
waiters (long-poll) and output watchers (follow) are kept here too, so a
job that finished releases all of them.
"""

from __future__ import annotations

import errno
import functools
import os
import secrets
import signal
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from httprunner import jobs, orphans
from httprunner.jobs import Job, JobSpec
from httprunner.process import ExitStatus, JobProcessProtocol, close_on_exec_all, spawn_session
from httprunner.store.base import JobStore, QueueFull, Recovery, Stored, UnknownNode

#: how often a long-poll or a follower of a job on another node asks the store
REMOTE_POLL = 0.5

#: how long a shutdown waits for the store to record the jobs' final states
#: (normally milliseconds; a state recorded later is still written when the
#: store closes, and its callback then resumes at the next start)
RECORD_GRACE = 2.0

#: errors of a momentarily exhausted machine: worth a retry, so 503
EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})


class SpawnUnavailable(Exception):
    """The machine is out of processes, fds or memory: answer 503."""


class ShuttingDown(Exception):
    """The daemon is stopping and takes no new job."""


class RunnerObserver(Protocol):
    """Hears every job's events, in this order."""

    def job_started(self, job: Job, spawn_seconds: float) -> None: ...

    def job_finished(self, job: Job) -> None:
        """The job reached its terminal state (before the store records it)."""

    def job_recorded(self, job: Job) -> None:
        """The store recorded the terminal state (a cluster node that lost
        the job to a "lost" verdict is not told)."""


#: resolves a recovered queued job's stored request under today's policy;
#: raises an exception with a ``message`` when it may no longer run
Resolver = Callable[[Stored], JobSpec]


@attrs.frozen
class Settings:
    max_running: int = 32
    max_queued: int = 1000
    max_output: int = 4 * 1024 * 1024
    kill_grace: float = 5.0
    kill_on_output_limit: bool = False
    drain_timeout: float = 0.5
    throttle_interval: float = 0.05


def find_program(program: str, path: str) -> tuple[str | None, str, str]:
    """Locate ``program`` as ``execvp`` would; return ``(path, errname, message)``.

    A name with a slash is taken as it is; a bare name is searched on the
    job's ``PATH``.  On failure the path is None and the error names
    ``ENOENT`` (exit 127) or ``EACCES`` (exit 126), like a shell.
    """
    if "/" in program:
        candidates = [program]
    else:
        candidates = [os.path.join(d or ".", program) for d in path.split(os.pathsep)]
    denied = None
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate, "", ""
        denied = candidate
    if denied is not None:
        return None, "EACCES", "permission denied: %s is not an executable file" % denied
    if "/" in program:
        return None, "ENOENT", "no such file: %s" % program
    return None, "ENOENT", "command not found on PATH: %s" % program


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "SIG%d" % signum


class JobRunner(Service):
    """Admit, queue, run and finish jobs."""

    log = Logger()

    def __init__(
        self,
        *,
        reactor: Any,
        store: JobStore,
        settings: Settings,
        spawn: Callable[..., Any] | None = None,
        make_id: Callable[[], str] = lambda: secrets.token_hex(20),
        monotonic: Callable[[], float] = time.monotonic,
        walltime: Callable[[], float] = time.time,
        killpg: Callable[[int, int], None] = os.killpg,
    ) -> None:
        self.reactor = reactor
        self.store = store
        self.settings = settings
        #: spawn(protocol, executable, args, env, path), IReactorProcess-like:
        #: by default each job leads its own session (see SessionProcess)
        self.spawn = spawn or functools.partial(spawn_session, reactor)
        self.make_id = make_id
        self.monotonic = monotonic
        self.walltime = walltime
        self.killpg = killpg
        self.observers: list[RunnerObserver] = []
        #: queued, running and being-admitted jobs of this daemon, by id
        self._active: dict[str, Job] = {}
        self._queue: deque[Job] = deque()
        self._running: dict[str, _RunningJob] = {}
        self._per_rule: dict[str, int] = {}
        #: slots and queue places held by admissions the store is committing
        self._reserved_slots = 0
        self._reserved_places = 0
        self._waiters: dict[str, list[Deferred[Job]]] = {}
        self._watchers: dict[str, list[Callable[[int], None]]] = {}
        self._accepting = True
        self._all_ended: list[Deferred[None]] = []
        #: terminal states the store has not confirmed yet
        self._recording: set[Deferred[Any]] = set()
        #: KILLs due to the process groups of jobs lost in a crash
        self._orphan_kills: dict[int, IDelayedCall] = {}
        #: a cluster store keeps the queue itself (shared by every node)
        self.shared_queue: bool = getattr(store, "shared_queue", False)
        #: this daemon's cluster node name (None: not a cluster)
        self.node_name: str | None = getattr(store, "node_name", None)
        #: the shared queue's length as the cluster node last counted it
        self.shared_queued = 0
        #: told when a slot frees and the queue is shared (the cluster claims)
        self.on_free_slot: Callable[[], None] = lambda: None
        #: the per-command limits seen, to tell a cluster what not to claim
        self._rule_limits: dict[str, int] = {}
        #: polls of jobs that run on other nodes (long-poll, follow)
        self._remote_polls: set[IDelayedCall] = set()

    # -- counts -------------------------------------------------------

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def queued_count(self) -> int:
        """Jobs waiting: this daemon's queue, or the cluster's shared one
        (as the cluster node last counted it)."""
        return self.shared_queued if self.shared_queue else len(self._queue)

    # -- admission ----------------------------------------------------

    def submit(self, spec: JobSpec) -> Deferred[Job]:
        """Admit a job: start it or queue it, once the store has it.

        Fails with QueueFull, ShuttingDown, StoreUnavailable (nothing was
        accepted), or SpawnUnavailable (the machine is exhausted: the job
        is not kept).  With the memory store the Deferred has already
        fired when this returns.
        """
        return Deferred.fromCoroutine(self._submit(spec))

    async def _submit(self, spec: JobSpec) -> Job:
        if not self._accepting:
            raise ShuttingDown()
        if spec.node is not None and not self.shared_queue:
            raise UnknownNode(spec.node)
        can_start = self._has_slot(spec.rule, spec.rule_limit) and spec.node in (None, self.node_name)
        if (
            not can_start
            and not self.shared_queue
            and len(self._queue) + self._reserved_places >= self.settings.max_queued
        ):
            raise QueueFull()
        job_id = self.make_id()
        spec = attrs.evolve(spec, env={**spec.env, "HTTPRUNNER_JOB_ID": job_id})
        job = Job(job_id=job_id, spec=spec, created_at=self.walltime(), max_output=self.settings.max_output)
        # Hold the slot (or the queue place) while the store commits, so
        # that admissions in flight cannot overfill either.
        if can_start:
            self._reserved_slots += 1
            self._per_rule[spec.rule] = self._per_rule.get(spec.rule, 0) + 1
        else:
            self._reserved_places += 1
        self._active[job.id] = job
        try:
            await self.store.admit(job, can_start)
        except BaseException:
            del self._active[job.id]
            raise
        finally:
            if can_start:
                self._reserved_slots -= 1
                self._per_rule[spec.rule] -= 1
            else:
                self._reserved_places -= 1
        if not self._accepting:
            # The daemon began to stop while the store committed: the job
            # is recorded, so it ends like the queue does: canceled, or
            # (durable store) queued for the next start.  One the store
            # recorded as starting is canceled too: left "running", the
            # next start would declare it lost though it never ran.
            if self.store.durable and not can_start:
                del self._active[job.id]
            else:
                self._end_unstarted(job, "CANCELED", "the daemon shut down before it started")
            return job
        if can_start:
            try:
                self._start(job, raise_exhaustion=True)
            except SpawnUnavailable:
                del self._active[job.id]
                self.store.forget(job)
                raise
            if job.finished:
                self._after_finish(job)
        elif self.shared_queue:
            # In the cluster's queue now: whichever node has a slot claims it.
            del self._active[job.id]
            job.launch = None
        else:
            self._enqueue(job)
            self._start_queued()
        return job

    def _enqueue(self, job: Job) -> None:
        self._queue.append(job)
        self.log.info("job {job_id} queued ({queued} waiting)", job_id=job.id, queued=len(self._queue))

    def _has_slot(self, rule: str, limit: int | None) -> bool:
        if len(self._running) + self._reserved_slots >= self.settings.max_running:
            return False
        if limit is not None:
            self._rule_limits[rule] = limit
        return limit is None or self._per_rule.get(rule, 0) < limit

    # -- the cluster's side -------------------------------------------

    @property
    def free_slots(self) -> int:
        return max(0, self.settings.max_running - len(self._running) - self._reserved_slots)

    def blocked_rules(self) -> list[str]:
        """Commands at their per-command limit here (not to be claimed)."""
        return [rule for rule, limit in self._rule_limits.items() if self._per_rule.get(rule, 0) >= limit]

    def running_leases(self) -> dict[str, str | None]:
        """This node's running jobs and the leases it holds on them."""
        return {job_id: running.job.lease for job_id, running in self._running.items()}

    def run_claimed(self, job: Job, spec: JobSpec) -> None:
        """Start a job this node claimed from the cluster's queue."""
        job.launch = spec
        if not self._accepting or not self._has_slot(spec.rule, spec.rule_limit):
            job.launch = None
            self.store.release(job)
            return
        self._active[job.id] = job
        self._start(job)
        if job.finished:
            self._after_finish(job)

    def refuse_claimed(self, job: Job, message: str) -> None:
        """A claimed job this node's policy does not allow: it cannot run here."""
        self._active[job.id] = job
        self._spawn_failed(job, "FORBIDDEN", "node %s may not run it: %s" % (self.node_name, message))
        self._after_finish(job)

    def abandon(self, job_id: str) -> None:
        """Stop a job this node no longer owns (declared lost meanwhile)."""
        running = self._running.get(job_id)
        if running is not None:
            self._terminate(running, "LOST", "declared lost while it ran on node %s" % self.node_name)

    # -- finding ------------------------------------------------------

    def find(self, job_id: str) -> Deferred[Job | None]:
        """The job with this id: this daemon's active jobs, then the store."""
        job = self._active.get(job_id)
        if job is not None:
            return succeed(job)
        return self.store.get(job_id)

    def local_job(self, job_id: str) -> Job | None:
        """The job with this id if this daemon has it in hand."""
        return self._active.get(job_id)

    def holds(self, job: Job) -> bool:
        """True for a job this daemon has in hand (queued or running here)."""
        return self._active.get(job.id) is job

    # -- recovery -----------------------------------------------------

    def recover(self, recovery: Recovery, resolve: Resolver) -> None:
        """Take over what a durable store kept across a restart.

        Jobs that were running when the daemon died are already recorded
        ``lost``: their process groups, if provably still the same
        processes, are TERMed now and KILLed after the grace period.
        Queued jobs are resolved again under today's policy and queued in
        their original order; one the policy no longer allows ends
        ``spawn_failed``.
        """
        self.end_orphans(recovery.lost)
        for stored in recovery.queued:
            job = stored.job
            try:
                job.launch = resolve(stored)
            except Exception as e:
                message = getattr(e, "message", None) or str(e)
                self._active[job.id] = job
                self._spawn_failed(job, "FORBIDDEN", "may no longer run after the restart: %s" % message)
                self._after_finish(job)
                continue
            self._active[job.id] = job
            self._queue.append(job)
        if recovery.queued:
            self.log.info("{count} queued jobs kept across the restart", count=len(self._queue))

    def end_orphans(self, lost: Iterable[Job]) -> None:
        """End the process groups of lost jobs that still run on this
        machine (provably the same processes: pid, start time, boot id; or,
        for a job whose spawn was never recorded, its id in their
        environment)."""
        unrecorded = set()
        for job in lost:
            if job.id in self._running:
                continue
            if job.pid is None:
                unrecorded.add(job.id)
            elif orphans.same_process(job.pid, job.identity):
                self.log.warn(
                    "job {job_id} was lost: ending its process group {pid}",
                    job_id=job.id,
                    pid=job.pid,
                )
                self._end_orphan(job.pid)
        if unrecorded:
            # The daemon died between a spawn and the write recording it.
            for job_id, groups in orphans.groups_of_jobs(unrecorded).items():
                for pgid in groups:
                    self.log.warn(
                        "job {job_id} was lost before its start was recorded: ending its process group {pid}",
                        job_id=job_id,
                        pid=pgid,
                    )
                    self._end_orphan(pgid)

    def _end_orphan(self, pgid: int) -> None:
        grace = self.settings.kill_grace
        if not orphans.signal_group(pgid, signal.SIGTERM if grace > 0 else signal.SIGKILL, self.killpg):
            return
        if grace > 0:
            self._orphan_kills[pgid] = self.reactor.callLater(grace, self._kill_orphan, pgid)

    def _kill_orphan(self, pgid: int) -> None:
        del self._orphan_kills[pgid]
        orphans.signal_group(pgid, signal.SIGKILL, self.killpg)

    # -- running ------------------------------------------------------

    def _start(self, job: Job, raise_exhaustion: bool = False) -> None:
        launch = job.launch
        assert launch is not None
        executable, errname, message = find_program(launch.program, launch.env.get("PATH", os.defpath))
        if executable is None:
            self._spawn_failed(job, errname, message)
            return
        if launch.cwd is not None and not os.path.isdir(launch.cwd):
            self._spawn_failed(job, "ENOENT", "working directory does not exist: %s" % launch.cwd)
            return
        protocol = JobProcessProtocol(
            job,
            self,
            self.reactor,
            throttle_interval=self.settings.throttle_interval,
            drain_timeout=self.settings.drain_timeout,
            killpg=self.killpg,
        )
        started = self.monotonic()
        try:
            # The job leads its own session and process group, so a signal
            # to the group reaches every process it started.
            self.spawn(protocol, executable, [executable, *launch.args], launch.env, launch.cwd)
        except OSError as e:
            if raise_exhaustion and e.errno in EXHAUSTION_ERRNOS:
                self.log.warn("job {job_id} not started: {error}", job_id=job.id, error=str(e))
                raise SpawnUnavailable(os.strerror(e.errno or 0)) from e
            name = errno.errorcode.get(e.errno or 0, "ESPAWN")
            self._spawn_failed(job, name, "could not start the command: %s" % (e.strerror or e))
            return
        except (ValueError, UnicodeError) as e:
            self._spawn_failed(job, "EINVAL", "could not start the command: %s" % e)
            return
        spawn_seconds = self.monotonic() - started
        job.state = jobs.RUNNING
        job.pid = protocol.pid
        job.node = self.node_name
        job.started_at = self.walltime()
        running = _RunningJob(job, protocol, started)
        self._running[job.id] = running
        self._per_rule[launch.rule] = self._per_rule.get(launch.rule, 0) + 1
        if job.timeout is not None:
            running.deadline = started + job.timeout
            self._schedule_deadline(running)
        self.store.started(job, functools.partial(self._identify, running))
        self.log.info(
            "job {job_id} started: {argv} (pid {pid})",
            job_id=job.id,
            argv=[executable, *launch.args],
            pid=job.pid,
            spawn_seconds=spawn_seconds,
        )
        for observer in self.observers:
            observer.job_started(job, spawn_seconds)

    def _identify(self, running: _RunningJob) -> orphans.Identity | None:
        """What proves, after a crash, that the job's pid is still its
        process (see orphans.py).  A durable store asks for it a few
        milliseconds after the spawn, as it records the start: reading
        ``/proc`` at once waits for the child's exec to finish."""
        job = running.job
        if job.pid is None or running.protocol.reaped:
            return None  # the pid may already name another process
        if job.identity is None:
            job.identity = orphans.identity(job.pid)
        return job.identity

    def _spawn_failed(self, job: Job, errname: str, message: str) -> None:
        job.state = jobs.SPAWN_FAILED
        job.code = 126 if errname in ("EACCES", "FORBIDDEN") else 127
        job.err = {"code": errname, "message": message}
        job.finished_at = self.walltime()
        # !r: the message names the requested program, which is user data.
        self.log.warn("job {job_id} could not start: {message!r}", job_id=job.id, message=message, code=job.code)

    def _schedule_deadline(self, running: _RunningJob) -> None:
        # reactor.callLater runs on wall-clock time; the deadline is on the
        # monotonic clock, checked again when the call fires (a clock step
        # forward cannot end a job early, one backward delays it <= 60 s).
        assert running.deadline is not None
        remaining = running.deadline - self.monotonic()
        if remaining <= 0:
            running.timer = None
            self._terminate(running, "TIMEOUT", "the job ran longer than its %gs timeout" % (running.job.timeout or 0))
            return
        running.timer = self.reactor.callLater(min(remaining, 60.0), self._schedule_deadline, running)

    def _terminate(self, running: _RunningJob, reason: str, message: str) -> None:
        """TERM the job's group now, KILL it after the grace period."""
        if running.kill_reason is not None:
            return
        running.kill_reason = (reason, message)
        if running.timer is not None:
            running.timer.cancel()
            running.timer = None
        grace = self.settings.kill_grace
        self.log.info("job {job_id} terminating: {reason}", job_id=running.job.id, reason=reason, grace=grace)
        if grace <= 0:
            running.protocol.signal_group(signal.SIGKILL)
            return
        running.protocol.signal_group(signal.SIGTERM)
        running.timer = self.reactor.callLater(grace, self._kill, running)

    def _kill(self, running: _RunningJob) -> None:
        running.timer = None
        self.log.warn("job {job_id} ignored SIGTERM: killing its process group", job_id=running.job.id)
        running.protocol.signal_group(signal.SIGKILL)

    # -- ProcessEvents ------------------------------------------------

    def process_output(self, job: Job, fd: int) -> None:
        watchers = self._watchers.get(job.id)
        if watchers:
            for watcher in list(watchers):
                watcher(fd)

    def process_over_cap(self, job: Job) -> None:
        if self.settings.kill_on_output_limit:
            running = self._running.get(job.id)
            if running is not None:
                self._terminate(running, "OUTPUT_LIMIT", "the job wrote more than the output limit")

    def process_ended(self, job: Job, status: ExitStatus) -> None:
        running = self._running.pop(job.id)
        assert job.launch is not None
        self._per_rule[job.launch.rule] -= 1
        if running.timer is not None:
            running.timer.cancel()
            running.timer = None
        if running.kill_reason is not None:
            # Whatever of the group survived TERM dies with the job.
            running.protocol.signal_group(signal.SIGKILL)
        exit_code = getattr(status, "exitCode", 0)
        signum = getattr(status, "signal", None)
        job.signal = None if signum is None else _signal_name(signum)
        job.code = 128 + signum if signum is not None else (exit_code or 0)
        job.cpu_seconds = getattr(running.protocol, "cpu_seconds", None)
        job.max_rss_bytes = getattr(running.protocol, "max_rss_bytes", None)
        if running.kill_reason is not None:
            reason, message = running.kill_reason
            job.state = {"TIMEOUT": jobs.TIMED_OUT, "OUTPUT_LIMIT": jobs.FAILED, "LOST": jobs.LOST}.get(
                reason, jobs.CANCELED
            )
            job.err = {"code": reason, "message": message}
        elif signum is not None:
            job.state = jobs.FAILED
            job.err = {"code": "SIGNAL", "message": "the job was killed by %s" % job.signal}
        else:
            job.state = jobs.SUCCEEDED if job.code == 0 else jobs.FAILED
        job.finished_at = self.walltime()
        job.duration = self.monotonic() - running.started
        self.log.info(
            "job {job_id} ended: {state}, code {code} in {duration:.3f}s",
            job_id=job.id,
            state=job.state,
            code=job.code,
            signal=job.signal,
            pid=job.pid,
            duration=job.duration,
            stdout_bytes=job.stdout.total,
            stderr_bytes=job.stderr.total,
        )
        self._after_finish(job)
        self._start_queued()

    # -- finishing ----------------------------------------------------

    def _after_finish(self, job: Job) -> None:
        job.release_request()
        for observer in self.observers:
            observer.job_finished(job)
        recorded = self.store.finished(job)
        self._active.pop(job.id, None)
        self._recording.add(recorded)
        recorded.addBoth(self._recorded, job, recorded)
        for waiter in self._waiters.pop(job.id, ()):
            waiter.callback(job)
        for watcher in self._watchers.pop(job.id, ()):
            watcher(0)
        if not self._running and self._all_ended:
            waiting, self._all_ended = self._all_ended, []
            for d in waiting:
                d.callback(None)

    def _recorded(self, won: Any, job: Job, recorded: Deferred[bool] | None) -> None:
        if recorded is not None:
            self._recording.discard(recorded)
        if won is True:
            for observer in self.observers:
                observer.job_recorded(job)
        elif won is False:
            self.log.warn("job {job_id} was declared lost while it ran here; its result is dropped", job_id=job.id)
        else:
            # A store never fails an eventual write (it retries); this is a bug.
            self.log.failure("recording job {job_id} failed", won, job_id=job.id)

    def _start_queued(self) -> None:
        if not self._accepting:
            return
        if self.shared_queue:
            if self.free_slots:
                self.on_free_slot()
            return
        for job in list(self._queue):
            if len(self._running) + self._reserved_slots >= self.settings.max_running:
                return
            assert job.launch is not None
            if self._has_slot(job.launch.rule, job.launch.rule_limit):
                self._queue.remove(job)
                if self.store.durable:
                    self._begin_start(job)
                else:
                    self._start(job)
                    if job.finished:
                        self._after_finish(job)

    def _begin_start(self, job: Job) -> None:
        """Start a queued job of a durable store once the store records
        that it is starting: a crash after the spawn must leave it lost,
        never queued to run a second time."""
        assert job.launch is not None
        rule = job.launch.rule
        self._reserved_slots += 1
        self._per_rule[rule] = self._per_rule.get(rule, 0) + 1
        marked = self.store.starting(job)
        self._recording.add(marked)
        marked.addBoth(self._marked_starting, job, rule, marked)

    def _marked_starting(self, result: object, job: Job, rule: str, marked: Deferred[None]) -> None:
        self._recording.discard(marked)
        self._reserved_slots -= 1
        self._per_rule[rule] -= 1
        if job.finished:
            return  # canceled meanwhile
        if not self._accepting:
            # The daemon is stopping: the job waits for the next start.
            self.store.requeue(job)
            self._active.pop(job.id, None)
            return
        self._start(job)
        if job.finished:
            self._after_finish(job)

    # -- control ------------------------------------------------------

    def cancel(self, job: Job) -> bool:
        """Cancel a queued or running job; False if it already finished."""
        if job.finished:
            return False
        if job.state == jobs.QUEUED:
            if job in self._queue:
                self._queue.remove(job)
            self._end_unstarted(job, "CANCELED", "canceled before it started")
            return True
        running = self._running[job.id]
        self._terminate(running, "CANCELED", "canceled by request")
        return True

    def cancel_anywhere(self, job: Job) -> Deferred[tuple[bool, Job]]:
        """Cancel ``job`` wherever it is: ``(True, job as now)`` when this
        call canceled it (or asked its node to), ``(False, job)`` when it
        had already finished."""
        if job.finished:
            return succeed((False, job))
        local = self._active.get(job.id)
        if local is not None:
            return succeed((self.cancel(local), local))
        if not self.shared_queue:
            return succeed((False, job))

        def canceled(ended: Job | None) -> tuple[bool, Job]:
            if ended is None:
                return True, job
            # Canceled in the queue by this node: it is the node that
            # recorded the terminal state, so it counts it and calls back.
            for observer in self.observers:
                observer.job_finished(ended)
            self._recorded(True, ended, None)
            return True, ended

        return self.store.request_cancel(job.id).addCallback(canceled)

    def _end_unstarted(self, job: Job, reason: str, message: str) -> None:
        job.state = jobs.CANCELED
        job.code = 128 + signal.SIGTERM
        job.err = {"code": reason, "message": message}
        job.finished_at = self.walltime()
        self.log.info("job {job_id} canceled while queued", job_id=job.id)
        self._after_finish(job)

    def when_finished(self, job: Job) -> Deferred[Job]:
        """A new Deferred that fires with ``job`` when it reaches its end."""
        if job.finished:
            return succeed(job)
        if self._active.get(job.id) is not job and self.shared_queue:
            return self._remote_finish(job)
        waiters = self._waiters.setdefault(job.id, [])

        def forget(d: Deferred[Job]) -> None:
            if d in waiters:
                waiters.remove(d)

        d: Deferred[Job] = Deferred(forget)
        waiters.append(d)
        return d

    def _remote_finish(self, job: Job) -> Deferred[Job]:
        """Poll the store for the end of a job another node runs."""
        pending: list[Any] = []

        def stop(d: Deferred[Job]) -> None:
            for item in pending:
                if isinstance(item, Deferred):
                    item.cancel()
                elif item.active():
                    item.cancel()
                    self._remote_polls.discard(item)

        done: Deferred[Job] = Deferred(stop)

        def check() -> None:
            pending.clear()
            if done.called:
                return
            d = self.store.get(job.id)
            pending.append(d)
            d.addCallbacks(got, lambda f: again())

        def got(found: Job | None) -> None:
            pending.clear()
            if done.called:
                return
            if found is None or found.finished:
                done.callback(found or job)
            else:
                again()

        def again() -> None:
            pending.clear()
            if done.called:
                return
            call = self.reactor.callLater(REMOTE_POLL, fire)
            self._remote_polls.add(call)
            pending.append(call)

        def fire() -> None:
            for item in pending:
                self._remote_polls.discard(item)
            check()

        again()
        return done

    def watch_output(self, job: Job, watcher: Callable[[int], None]) -> Callable[[], None]:
        """Call ``watcher(fd)`` on each chunk of output, ``watcher(0)`` at the end.

        Returns the function that stops watching.
        """
        watchers = self._watchers.setdefault(job.id, [])
        watchers.append(watcher)

        def unwatch() -> None:
            if watcher in watchers:
                watchers.remove(watcher)
            if not watchers and self._watchers.get(job.id) is watchers:
                del self._watchers[job.id]

        return unwatch

    # -- IService -----------------------------------------------------

    def startService(self) -> None:
        super().startService()
        close_on_exec_all()
        self._start_queued()

    def stopService(self) -> Deferred[None]:
        """Stop taking jobs, settle the queue, end every running job.

        With the memory store the queue is canceled; a durable store keeps
        it for the next start.  Running jobs get TERM, then KILL after the
        grace period; the Deferred fires once every one of them has ended
        and the store has been handed its final state.
        """
        super().stopService()
        self._accepting = False
        if self.store.durable:
            if self._queue:
                self.log.info("shutting down: {count} queued jobs stay queued", count=len(self._queue))
            self._queue.clear()
        while self._queue:
            self._end_unstarted(self._queue.popleft(), "CANCELED", "the daemon shut down before it started")
        for pgid, call in list(self._orphan_kills.items()):
            call.cancel()
            self._kill_orphan(pgid)
        for call in list(self._remote_polls):
            if call.active():
                call.cancel()
        self._remote_polls.clear()
        if self._running:
            self.log.info("shutting down: stopping {count} running jobs", count=len(self._running))
            for running in list(self._running.values()):
                self._terminate(running, "CANCELED", "the daemon shut down")
            ended: Deferred[None] = Deferred()
            self._all_ended.append(ended)
        else:
            ended = succeed(None)
        return ended.addCallback(lambda _: self._settled())

    def _settled(self) -> Deferred[None]:
        waiting = list(self._recording)
        if not waiting:
            return succeed(None)
        # Bounded: a store that refuses writes (disk full) retries them
        # for ever, and a daemon asked to stop must stop.  The store logs
        # what it could not record when it closes.
        settled: Deferred[None] = Deferred()

        def done(_: object) -> None:
            if timer.active():
                timer.cancel()
            if not settled.called:
                settled.callback(None)

        def give_up() -> None:
            self.log.warn(
                "shutting down: the store has not recorded {count} final states yet; not waiting longer",
                count=len(self._recording),
            )
            settled.callback(None)

        timer = self.reactor.callLater(RECORD_GRACE, give_up)
        DeferredList(waiting, consumeErrors=True).addBoth(done)
        return settled


class _RunningJob:
    """What the runner keeps about a job while its process runs."""

    __slots__ = ("job", "protocol", "started", "deadline", "timer", "kill_reason")

    def __init__(self, job: Job, protocol: JobProcessProtocol, started: float) -> None:
        self.job = job
        self.protocol = protocol
        self.started = started
        self.deadline: float | None = None
        self.timer: IDelayedCall | None = None
        self.kill_reason: tuple[str, str] | None = None
