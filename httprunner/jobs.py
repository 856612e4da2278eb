"""The Job record, its states, and its JSON view.

The JSON view keeps the seed's keys first, in the seed's order
(``stderr, stdout, id, code, command, arguments, callback, err``), so
clients of the original program keep working; our keys follow.
"""

from __future__ import annotations

import base64
import functools
import sys
import time
from collections import OrderedDict
from typing import Any

import attrs

from httprunner.output import OutputBuffer
from httprunner.responses import dump_json

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
CANCELED = "canceled"
SPAWN_FAILED = "spawn_failed"
LOST = "lost"

STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, TIMED_OUT, CANCELED, SPAWN_FAILED, LOST)
ACTIVE_STATES = frozenset({QUEUED, RUNNING})
TERMINAL_STATES = frozenset(STATES) - ACTIVE_STATES


def rfc3339(timestamp: float | None) -> str | None:
    """``2026-11-27T21:00:00.123Z`` for a POSIX timestamp, or None."""
    if timestamp is None:
        return None
    seconds = int(timestamp)
    millis = int((timestamp - seconds) * 1000)
    return "%s.%03dZ" % (_utc_seconds(seconds), millis)


@functools.lru_cache(maxsize=1024)
def _utc_seconds(seconds: int) -> str:
    # Every GET renders three timestamps, mostly of the same few seconds.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


@attrs.frozen
class JobSpec:
    """What to run: a validated request, resolved by the policy.

    A job holds it (as ``launch``) until it ends, then lets it go.
    """

    command: str
    arguments: list[str]
    program: str
    args: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None = None
    stdin: bytes | None = None
    timeout: float | None = None
    callback: str | None = None
    #: per-command concurrency: the policy rule's name and limit
    rule: str = ""
    rule_limit: int | None = None
    #: what the request itself asked for, kept (with ``stdin``) while the
    #: job waits so that a durable store can resolve it again after a
    #: restart, under the policy the daemon then has
    request_env: dict[str, str] = attrs.field(factory=dict)
    requested_timeout: float | None = None
    #: the node a job is pinned to (cluster), None: any node
    node: str | None = None


def request_record(spec: JobSpec) -> dict[str, Any]:
    """What a durable store keeps of a waiting job's request: enough to
    resolve it again after a restart (``Admission.respec``)."""
    return {
        "env": spec.request_env,
        "stdin": None if spec.stdin is None else base64.b64encode(spec.stdin).decode("ascii"),
        "timeout": spec.requested_timeout,
        "node": spec.node,
    }


class Job:
    """One submitted command, from admission to its terminal state.

    Thousands of finished jobs are retained, so a job keeps only its JSON
    view's fields in slots; what was needed to run it (``launch``: argv,
    environment, stdin) is released when it ends.
    """

    __slots__ = (
        "id",
        "command",
        "arguments",
        "callback",
        "callback_delivery",
        "state",
        "code",
        "signal",
        "err",
        "pid",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
        "timeout",
        "stdout",
        "stderr",
        "launch",
        "node",
        "cpu_seconds",
        "max_rss_bytes",
        "seq",
        "lease",
        "identity",
        "pinned_node",
    )

    def __init__(self, *, job_id: str, spec: JobSpec, created_at: float, max_output: int) -> None:
        self.id = job_id
        # Most jobs run one of a few commands: share one string for each.
        self.command = sys.intern(spec.command)
        self.arguments = spec.arguments
        self.callback = spec.callback
        self.callback_delivery: Any = None
        self.state = QUEUED
        self.code: int | None = None
        self.signal: str | None = None
        self.err: dict[str, str] | None = None
        self.pid: int | None = None
        self.created_at = created_at
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.duration: float | None = None
        self.timeout = spec.timeout
        self.stdout = OutputBuffer(max_output)
        self.stderr = OutputBuffer(max_output)
        self.launch: JobSpec | None = spec
        #: the cluster node that runs or ran the job; None while queued and
        #: when the store is not a cluster
        self.node: str | None = None
        self.pinned_node: str | None = spec.node
        self.cpu_seconds: float | None = None
        self.max_rss_bytes: int | None = None
        #: the store's submission order (set by the store on admission)
        self.seq: int | None = None
        #: the cluster claim this node holds on the job (a fresh token per claim)
        self.lease: str | None = None
        #: (process start time in clock ticks since boot, boot id) of the
        #: job's process, recorded at spawn: after a crash it proves that a
        #: pid still names the same process before its group is killed
        self.identity: tuple[int, str] | None = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    def release_request(self) -> None:
        """Drop what was only needed to run the job."""
        self.launch = None
        self.stdout.compact()
        self.stderr.compact()

    @property
    def command_line(self) -> str:
        """The command and its arguments as one line (for text filters)."""
        return " ".join([self.command, *self.arguments])

    def to_json(self, *, output: bool = True) -> dict[str, Any]:
        """The job as the API shows it; ``output=False`` for listings."""
        view: dict[str, Any] = {}
        if output:
            view["stderr"] = self.stderr.text()
            view["stdout"] = self.stdout.text()
        view["id"] = self.id
        view["code"] = self.code
        view["command"] = self.command
        view["arguments"] = self.arguments
        if self.callback is not None:
            view["callback"] = self.callback
        view["err"] = self.err
        view["state"] = self.state
        view["signal"] = self.signal
        view["pid"] = self.pid
        view["node"] = self.node
        view["created_at"] = rfc3339(self.created_at)
        view["started_at"] = rfc3339(self.started_at)
        view["finished_at"] = rfc3339(self.finished_at)
        view["duration"] = None if self.duration is None else round(self.duration, 6)
        view["cpu_seconds"] = None if self.cpu_seconds is None else round(self.cpu_seconds, 6)
        view["max_rss_bytes"] = self.max_rss_bytes
        view["timeout"] = self.timeout
        view["stdout_bytes"] = self.stdout.total
        view["stderr_bytes"] = self.stderr.total
        view["stdout_dropped"] = self.stdout.dropped
        view["stderr_dropped"] = self.stderr.dropped
        if self.callback_delivery is not None:
            view["callback_delivery"] = self.callback_delivery.to_json()
        return view

    def to_json_bytes(self) -> bytes:
        """The exact bytes ``GET /<id>`` answers (and a callback sends).

        A finished job's bytes are rendered once and reused while it is
        among the most recently rendered (a GET of a job that just finished
        is the commonest request): nothing in them changes any more, once
        its callback delivery record (if any) is final too.  The cache is
        bounded, so that thousands of retained jobs do not each keep their
        rendering.
        """
        cached = _RENDERED.get(self.id)
        if cached is not None and cached[0] is self:
            _RENDERED.move_to_end(self.id)
            return cached[1]
        body = dump_json(self.to_json())
        if self.state in TERMINAL_STATES and (
            self.callback_delivery is None or self.callback_delivery.state != "pending"
        ):
            _RENDERED[self.id] = (self, body)
            if len(_RENDERED) > RENDERED_JOBS:
                _RENDERED.popitem(last=False)
        return body


#: how many finished jobs' JSON renderings are kept (see Job.to_json_bytes)
RENDERED_JOBS = 1024
_RENDERED: OrderedDict[str, tuple[Job, bytes]] = OrderedDict()
