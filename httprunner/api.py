"""The Klein app: routes, strict request parsing, JSON answers and errors.

Every answer is JSON (except the raw output endpoints), every error is
``{"message": <reason phrase>, "error": <what was wrong>}``, including
unknown routes, wrong methods and internal errors.
"""

from __future__ import annotations

# werkzeug encodes the Host with "idna" on every request; import the codec
# now, before twistd --uid drops privileges (a lazy import may then fail).
import encodings.idna  # noqa: F401
import importlib.resources
import math
import os
import re
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from httprunner import __version__
from httprunner.callbacks import CallbackURLError, check_callback_url
from httprunner.jobs import STATES, Job, JobSpec
from httprunner.parsing import RequestError, parse_job_request
from httprunner.policy import PolicyError
from httprunner.responses import dump_json, json_error, json_response
from httprunner.runner import QueueFull, ShuttingDown, SpawnUnavailable

#: the OpenAPI 3.1 description of this API, served as it is in the package
OPENAPI = importlib.resources.files("httprunner").joinpath("openapi.json").read_bytes()
JOB_ID = re.compile(r"[0-9a-f]{40}")
#: Linux refuses a single argv/env string longer than 32 pages
MAX_ARG_STRLEN = 32 * 4096
OCTET_STREAM = b"application/octet-stream"
#: the most one write of a follow stream sends
FOLLOW_CHUNK = 64 * 1024


@attrs.frozen
class Limits:
    default_timeout: float | None = None
    max_timeout: float | None = None
    max_wait: float = 300.0
    retry_after: int = 1
    arg_max: int = attrs.field(factory=lambda: os.sysconf("SC_ARG_MAX"))


class JobAPI:
    """The HTTP API over a JobRunner, its store and the policy."""

    app = Klein()
    log = Logger()

    def __init__(
        self, *, runner: Any, store: Any, policy: Any, limits: Limits, callback_guard: Any = None, metrics: Any = None
    ) -> None:
        self.runner = runner
        self.metrics = metrics
        self.store = store
        self.policy = policy
        self.limits = limits
        self.callback_guard = callback_guard
        self.reactor = runner.reactor

    def resource(self) -> Any:
        return self.app.resource()

    # -- submission ---------------------------------------------------

    @app.route("/", methods=["POST"])
    def submit(self, request: IRequest) -> bytes:
        try:
            spec = self._job_spec(request.content.read())
            job = self.runner.submit(spec)
        except RequestError as e:
            return json_error(request, e.status, e.message)
        except QueueFull:
            request.setHeader(b"Retry-After", b"%d" % self.limits.retry_after)
            return json_error(request, 503, "the queue is full: too many jobs are running or waiting; retry later")
        except SpawnUnavailable as e:
            request.setHeader(b"Retry-After", b"%d" % self.limits.retry_after)
            return json_error(request, 503, "the machine cannot start a process now (%s); retry later" % e)
        except ShuttingDown:
            request.setHeader(b"Retry-After", b"%d" % self.limits.retry_after)
            return json_error(request, 503, "the daemon is shutting down")
        request.setHeader(b"Location", b"/" + job.id.encode("ascii"))
        return json_response(request, 202, job.to_json_bytes())

    def _job_spec(self, body: bytes) -> JobSpec:
        """Parse, check the callback, ask the policy, settle the timeout."""
        req = parse_job_request(body)
        try:
            callback = check_callback_url(req.callback, self.callback_guard)
        except CallbackURLError as e:
            raise RequestError("callback: %s" % e) from None
        try:
            resolved = self.policy.resolve(req.command, req.args, req.env)
        except PolicyError as e:
            raise RequestError(e.message, e.status) from None
        timeout = self._timeout(req.timeout, resolved.timeout, resolved.max_timeout)
        self._check_exec_size(resolved.program, resolved.args, resolved.env)
        return JobSpec(
            command=req.command,
            arguments=req.args,
            program=resolved.program,
            args=tuple(resolved.args),
            env=resolved.env,
            cwd=resolved.cwd,
            stdin=req.stdin,
            timeout=timeout,
            callback=callback,
            rule=resolved.rule,
            rule_limit=resolved.max_running,
        )

    def _timeout(self, requested: float | None, rule_default: float | None, rule_max: float | None) -> float | None:
        """The effective timeout: request, else policy default, else server default.

        A policy command's own ``max_timeout`` replaces the server's
        ``--max-timeout`` (a backup may be allowed hours where the default
        ceiling is minutes); a request over the ceiling is refused.
        """
        ceiling = rule_max or self.limits.max_timeout
        if requested is not None and ceiling is not None and requested > ceiling:
            raise RequestError("timeout %g is over the maximum of %g seconds" % (requested, ceiling))
        effective = requested or rule_default or self.limits.default_timeout
        if effective and ceiling is not None:
            effective = min(effective, ceiling)
        return effective or None

    def _check_exec_size(self, program: str, args: Any, env: dict[str, str]) -> None:
        """Refuse what execve would refuse with E2BIG, before spawning."""
        total = len(program.encode()) + 1
        for arg in args:
            size = len(arg.encode()) + 1
            if size > MAX_ARG_STRLEN:
                raise RequestError(
                    "an argument is %d bytes, over the system's %d-byte limit" % (size - 1, MAX_ARG_STRLEN - 1)
                )
            total += size + 8
        for name, value in env.items():
            size = len(name.encode()) + len(value.encode()) + 2
            if size > MAX_ARG_STRLEN:
                raise RequestError("environment variable %s is over the system's size limit" % name)
            total += size + 8
        if total > self.limits.arg_max - 4096:
            raise RequestError(
                "arguments and environment total %d bytes, over the system's limit of %d" % (total, self.limits.arg_max)
            )

    # -- one job ------------------------------------------------------

    def _job(self, job_id: str) -> Job:
        job = self.store.get(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise RequestError("no job with id %r (unknown, or evicted: see --max-jobs)" % job_id[:80], 404)
        return job

    @app.route("/<job_id>", methods=["GET", "DELETE"])
    @app.route("/<job_id>/", methods=["GET", "DELETE"])
    def one_job(self, request: IRequest, job_id: str) -> Any:
        try:
            job = self._job(job_id)
            if request.method == b"DELETE":
                status = 202 if self.runner.cancel(job) else 200
                return json_response(request, status, job.to_json_bytes())
            wait = _number_arg(request, b"wait")
        except RequestError as e:
            return json_error(request, e.status, e.message)
        if wait is None or wait <= 0 or job.finished:
            return json_response(request, 200, job.to_json_bytes())
        # Each long-poll gets its own Deferred: Klein cancels what a route
        # returns when the client hangs up, which removes only this waiter.
        d = self.runner.when_finished(job)
        d.addTimeout(min(wait, self.limits.max_wait), self.reactor, onTimeoutCancel=lambda _r, _t: job)
        d.addCallback(lambda j: json_response(request, 200, j.to_json_bytes()))
        return d

    @app.route("/<job_id>/stdout", methods=["GET"])
    def stdout(self, request: IRequest, job_id: str) -> Any:
        return self._output(request, job_id, 1)

    @app.route("/<job_id>/stderr", methods=["GET"])
    def stderr(self, request: IRequest, job_id: str) -> Any:
        return self._output(request, job_id, 2)

    def _output(self, request: IRequest, job_id: str, fd: int) -> Any:
        try:
            job = self._job(job_id)
            offset = _int_arg(request, b"offset", 0)
            follow = _flag_arg(request, b"follow")
        except RequestError as e:
            return json_error(request, e.status, e.message)
        buffer = job.stdout if fd == 1 else job.stderr
        start, data = buffer.read(offset)
        request.setHeader(b"Content-Type", OCTET_STREAM)
        request.setHeader(b"X-Output-Offset", b"%d" % start)
        if not follow:
            return data
        return _Follower(request, self.runner, job, fd, start).done

    # -- collections and service routes --------------------------------

    @app.route("/jobs", methods=["GET"])
    def list_jobs(self, request: IRequest) -> bytes:
        try:
            limit = _int_arg(request, b"limit", 100)
            if not 1 <= limit <= 1000:
                raise RequestError("limit must be between 1 and 1000")
            states = None
            raw_states = request.args.get(b"state")
            if raw_states:
                states = set()
                for raw in raw_states:
                    for name in raw.decode("utf-8", "replace").split(","):
                        if name not in STATES:
                            raise RequestError("unknown state %r; states are %s" % (name, ", ".join(STATES)))
                        states.add(name)
        except RequestError as e:
            return json_error(request, e.status, e.message)
        found = []
        for job in self.store.newest(states):
            found.append(job.to_json(output=False))
            if len(found) >= limit:
                break
        return json_response(request, 200, dump_json({"jobs": found}))

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        return json_response(
            request,
            200,
            dump_json(
                {
                    "status": "ok",
                    "running": self.runner.running_count,
                    "queued": self.runner.queued_count,
                    "version": __version__,
                }
            ),
        )

    @app.route("/metrics", methods=["GET"])
    def metrics_text(self, request: IRequest) -> bytes:
        if self.metrics is None:
            return json_error(request, 404, "metrics are not enabled")
        body, content_type = self.metrics.render()
        request.setHeader(b"Content-Type", content_type)
        return body

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        return json_response(request, 200, OPENAPI)

    # -- errors -------------------------------------------------------

    @app.handle_errors(HTTPException)
    def http_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPException)
        status = error.code or 500
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            request.setHeader(b"Allow", ", ".join(sorted(error.valid_methods)).encode("ascii"))
            message = "method %s is not allowed here; allowed: %s" % (
                request.method.decode("ascii", "replace"),
                ", ".join(sorted(error.valid_methods)),
            )
        elif status == 404:
            message = "no such route: %s" % request.path.decode("utf-8", "replace")[:200]
        else:
            message = error.description or error.name
        return json_error(request, status, message)

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        self.log.failure("internal error answering {method} {path}", failure, method=request.method, path=request.path)
        return json_error(request, 500, "internal error; the daemon's log has the details")


class _Follower:
    """Stream one output of a job as it grows, as a pull producer.

    The transport asks for more (``resumeProducing``) only once what was
    written has been sent, so a slow client costs at most one chunk of
    memory, never the whole stream.
    """

    def __init__(self, request: IRequest, runner: Any, job: Job, fd: int, offset: int) -> None:
        self.request = request
        self.job = job
        self.fd = fd
        self.buffer = job.stdout if fd == 1 else job.stderr
        self.offset = offset
        self.wanted = False
        self.done: Deferred[bytes] = Deferred(lambda _d: self._stop())
        self.unwatch = runner.watch_output(job, self._output)
        request.registerProducer(self, False)

    def _output(self, fd: int) -> None:
        if fd in (self.fd, 0):
            self._pump()

    def resumeProducing(self) -> None:
        self.wanted = True
        self._pump()

    def pauseProducing(self) -> None:
        self.wanted = False

    def stopProducing(self) -> None:
        self._stop()

    def _pump(self) -> None:
        if not self.wanted or self.done.called:
            return
        start, data = self.buffer.read(self.offset)
        if data:
            data = data[:FOLLOW_CHUNK]
            self.offset = start + len(data)
            self.wanted = False
            self.request.write(data)
        elif self.job.finished:
            self._stop()
            self.done.callback(b"")

    def _stop(self) -> None:
        self.unwatch()
        if self.request.producer is self:
            self.request.unregisterProducer()


def _arg(request: IRequest, name: bytes) -> str | None:
    values = request.args.get(name)
    if not values:
        return None
    return values[-1].decode("utf-8", "replace")


def _number_arg(request: IRequest, name: bytes) -> float | None:
    raw = _arg(request, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise RequestError("%s must be a number of seconds >= 0, not %r" % (name.decode(), raw[:40]))
    return value


def _int_arg(request: IRequest, name: bytes, default: int) -> int:
    raw = _arg(request, name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise RequestError("%s must be a non-negative integer, not %r" % (name.decode(), raw[:40]))
    return int(raw)


def _flag_arg(request: IRequest, name: bytes) -> bool:
    raw = _arg(request, name)
    if raw is None:
        return False
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no", ""):
        return False
    raise RequestError("%s must be 1/true or 0/false, not %r" % (name.decode(), raw[:40]))
