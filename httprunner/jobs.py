"""The Job record, its states, and its JSON view.

The JSON view keeps the seed's keys first, in the seed's order
(``stderr, stdout, id, code, command, arguments, callback, err``), so
clients of the original program keep working; our keys follow.
"""

from __future__ import annotations

import time
from typing import Any

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
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%03dZ" % millis


class Job:
    """One submitted command, from admission to its terminal state.

    The request-time fields (``argv``, ``env``, ``cwd``, ``stdin``) are
    released when the job finishes: thousands of finished jobs are
    retained, and only their JSON view matters then.
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
        # request-time fields, released at the end
        "program",
        "args",
        "env",
        "cwd",
        "stdin",
        "rule",
        "rule_limit",
    )

    def __init__(
        self,
        *,
        job_id: str,
        command: str,
        arguments: list[str],
        program: str,
        args: tuple[str, ...] | list[str],
        env: dict[str, str],
        created_at: float,
        max_output: int,
        callback: str | None = None,
        cwd: str | None = None,
        stdin: bytes | None = None,
        timeout: float | None = None,
        rule: str = "",
        rule_limit: int | None = None,
    ) -> None:
        self.id = job_id
        self.command = command
        self.arguments = arguments
        self.callback = callback
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
        self.timeout = timeout
        self.stdout = OutputBuffer(max_output)
        self.stderr = OutputBuffer(max_output)
        self.program: str | None = program
        self.args = args
        self.env: dict[str, str] | None = env
        self.cwd = cwd
        self.stdin = stdin
        self.rule = rule
        self.rule_limit = rule_limit

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    def release_request(self) -> None:
        """Drop what was only needed to run the job."""
        self.program = None
        self.args = ()
        self.env = None
        self.stdin = None
        self.stdout.compact()
        self.stderr.compact()

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
        view["created_at"] = rfc3339(self.created_at)
        view["started_at"] = rfc3339(self.started_at)
        view["finished_at"] = rfc3339(self.finished_at)
        view["duration"] = None if self.duration is None else round(self.duration, 6)
        view["timeout"] = self.timeout
        view["stdout_bytes"] = self.stdout.total
        view["stderr_bytes"] = self.stderr.total
        view["stdout_dropped"] = self.stdout.dropped
        view["stderr_dropped"] = self.stderr.dropped
        if self.callback_delivery is not None:
            view["callback_delivery"] = self.callback_delivery.to_json()
        return view

    def to_json_bytes(self) -> bytes:
        """The exact bytes ``GET /<id>`` answers (and a callback sends)."""
        return dump_json(self.to_json())
