"""The Klein app: routes, strict request parsing, JSON answers and errors.

Every answer is JSON (except the raw output endpoints and the dashboard's
static files under ``/ui/``, see :mod:`httprunner.web`), every error is
``{"message": <reason phrase>, "error": <what was wrong>}``, including
unknown routes, wrong methods and internal errors.
"""

from __future__ import annotations

# werkzeug encodes the Host with "idna" on every request; import the codec
# now, before twistd --uid drops privileges (a lazy import may then fail).
import encodings.idna  # noqa: F401
import importlib.resources
import math
import re
from typing import Any

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from httprunner import __version__, web
from httprunner.admission import Admission, Limits
from httprunner.jobs import STATES, Job, rfc3339
from httprunner.parsing import RequestError, parse_job_request
from httprunner.responses import dump_json, json_error, json_response
from httprunner.runner import REMOTE_POLL, ShuttingDown, SpawnUnavailable
from httprunner.stats import stats_document, window_start
from httprunner.store.base import ListQuery, QueueFull, StoreUnavailable, UnknownCursor, UnknownNode

__all__ = ["JobAPI", "Limits"]

#: the OpenAPI 3.1 description of this API, served as it is in the package
OPENAPI = importlib.resources.files("httprunner").joinpath("openapi.json").read_bytes()
JOB_ID = re.compile(r"[0-9a-f]{40}")
#: the API's fixed paths: a wrong method there is a 405, not "no job 'jobs'"
FIXED_PATHS = {
    "jobs": "GET",
    "stats": "GET",
    "healthz": "GET",
    "metrics": "GET",
    "openapi.json": "GET",
    "ui": "GET",
}
OCTET_STREAM = b"application/octet-stream"
#: the longest text filter of GET /jobs?q=
MAX_QUERY_TEXT = 500
#: the most one write of a follow stream sends
FOLLOW_CHUNK = 64 * 1024


class JobAPI:
    """The HTTP API over a JobRunner, its store and the policy."""

    app = Klein()
    # werkzeug would answer "/jobs//" with a redirect to "/jobs/" (a 308
    # our error handler cannot give a Location); such paths are simply
    # unknown routes here.  Set before any route is declared.
    app.url_map.merge_slashes = False
    log = Logger()

    def __init__(
        self,
        *,
        runner: Any,
        store: Any,
        policy: Any,
        limits: Limits,
        callback_guard: Any = None,
        metrics: Any = None,
    ) -> None:
        self.runner = runner
        self.metrics = metrics
        self.store = store
        self.limits = limits
        self.admission = Admission(policy, limits, callback_guard)
        self.reactor = runner.reactor

    def resource(self) -> Any:
        return self.app.resource()

    # -- submission ---------------------------------------------------

    @app.route("/", methods=["POST"])
    async def submit(self, request: IRequest) -> bytes:
        try:
            spec = self.admission.spec(parse_job_request(request.content.read()))
            job = await self.runner.submit(spec)
        except RequestError as e:
            return json_error(request, e.status, e.message)
        except UnknownNode as e:
            if not self.store.shared_queue:
                return json_error(request, 400, "node: this daemon is not a cluster node (see --store postgresql://)")
            return json_error(request, 400, "node: no live node is named %r" % str(e)[:80])
        except QueueFull:
            request.setHeader(b"Retry-After", b"%d" % self.limits.retry_after)
            return json_error(request, 503, "the queue is full: too many jobs are running or waiting; retry later")
        except SpawnUnavailable as e:
            request.setHeader(b"Retry-After", b"%d" % self.limits.retry_after)
            return json_error(request, 503, "the machine cannot start a process now (%s); retry later" % e)
        except StoreUnavailable as e:
            request.setHeader(b"Retry-After", b"%d" % self.limits.retry_after)
            return json_error(request, 503, "the job could not be recorded (%s); nothing was accepted, retry later" % e)
        except ShuttingDown:
            request.setHeader(b"Retry-After", b"%d" % self.limits.retry_after)
            return json_error(request, 503, "the daemon is shutting down")
        request.setHeader(b"Location", b"/" + job.id.encode("ascii"))
        return json_response(request, 202, job.to_json_bytes())

    # -- one job ------------------------------------------------------

    async def _job(self, job_id: str) -> Job:
        job: Job | None = await self.runner.find(job_id) if JOB_ID.fullmatch(job_id) else None
        if job is None:
            raise RequestError("no job with id %r (unknown, or evicted: see --max-jobs)" % job_id[:80], 404)
        return job

    @app.route("/<job_id>", methods=["GET", "DELETE"])
    @app.route("/<job_id>/", methods=["GET", "DELETE"])
    async def one_job(self, request: IRequest, job_id: str) -> Any:
        if job_id in FIXED_PATHS:
            # DELETE /jobs reaches this route; it is a wrong method on a
            # fixed path, like every other.
            allowed = FIXED_PATHS[job_id]
            request.setHeader(b"Allow", allowed.encode("ascii"))
            return json_error(
                request,
                405,
                "method %s is not allowed here; allowed: %s" % (request.method.decode("ascii", "replace"), allowed),
            )
        try:
            job = await self._job(job_id)
            if request.method == b"DELETE":
                changed, job = await self.runner.cancel_anywhere(job)
                return json_response(request, 202 if changed else 200, job.to_json_bytes())
            wait = _number_arg(request, b"wait")
        except RequestError as e:
            return json_error(request, e.status, e.message)
        if wait is None or wait <= 0 or job.finished:
            return json_response(request, 200, job.to_json_bytes())
        # Each long-poll gets its own Deferred: Klein cancels what a route
        # returns when the client hangs up, which removes only this waiter.
        d = self.runner.when_finished(job)
        d.addTimeout(min(wait, self.limits.max_wait), self.reactor, onTimeoutCancel=lambda _r, _t: job)
        done = await d
        return json_response(request, 200, done.to_json_bytes())

    @app.route("/<job_id>/stdout", methods=["GET"])
    def stdout(self, request: IRequest, job_id: str) -> Any:
        return self._output(request, job_id, 1)

    @app.route("/<job_id>/stderr", methods=["GET"])
    def stderr(self, request: IRequest, job_id: str) -> Any:
        return self._output(request, job_id, 2)

    async def _output(self, request: IRequest, job_id: str, fd: int) -> Any:
        try:
            job = await self._job(job_id)
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
        if job.finished or self.runner.holds(job):
            return await _Follower(request, self.runner, job, fd, start).done
        # Running on another node of the cluster: its output arrives
        # through the database.
        return await _RemoteFollower(request, self.store, self.reactor, job.id, fd, start).done

    # -- collections and service routes --------------------------------

    @app.route("/jobs", methods=["GET"])
    async def list_jobs(self, request: IRequest) -> bytes:
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
            before = _arg(request, b"before")
            if before is not None and not JOB_ID.fullmatch(before):
                raise RequestError("before must be a job id (40 hex digits), not %r" % before[:80])
            text = _arg(request, b"q") or None
            if text is not None and len(text) > MAX_QUERY_TEXT:
                raise RequestError("q is %d characters; at most %d" % (len(text), MAX_QUERY_TEXT))
            query = ListQuery(
                states=None if states is None else frozenset(states), text=text, before=before, limit=limit
            )
            found = await self.store.list(query)
        except RequestError as e:
            return json_error(request, e.status, e.message)
        except UnknownCursor:
            return json_error(
                request, 400, "before: no job with id %r (unknown, or evicted since the last page)" % before
            )
        views = [job.to_json(output=False) for job in found]
        # A full page may have more after it: the cursor for the next one.
        following = found[-1].id if len(found) == limit else None
        return json_response(request, 200, dump_json({"jobs": views, "next": following}))

    @app.route("/stats", methods=["GET"])
    async def stats(self, request: IRequest) -> bytes:
        # the clock the runner stamps jobs with, so the minutes line up
        now = self.runner.walltime()
        try:
            counts = await self.store.counts(window_start(now))
        except StoreUnavailable as e:
            request.setHeader(b"Retry-After", b"%d" % self.limits.retry_after)
            return json_error(request, 503, "the store cannot count the jobs now (%s); retry later" % e)
        running, queued = self.runner.running_count, self.runner.queued_count
        nodes: list[dict[str, Any]] = []
        if self.store.shared_queue:
            # A cluster: the whole cluster's numbers, and its nodes.
            running, queued = counts.states.get("running", 0), counts.states.get("queued", 0)
            try:
                found = await self.store.nodes()
            except StoreUnavailable as e:
                request.setHeader(b"Retry-After", b"%d" % self.limits.retry_after)
                return json_error(request, 503, "the store cannot list the nodes now (%s); retry later" % e)
            nodes = [
                {
                    "name": node.name,
                    "last_heartbeat": rfc3339(node.heartbeat_at),
                    "alive": node.alive,
                    "running": node.running,
                }
                for node in found
            ]
        document = stats_document(now=now, running=running, queued=queued, counts=counts, nodes=nodes)
        return json_response(request, 200, dump_json(document))

    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: IRequest) -> bytes:
        store = self.store.health()
        return json_response(
            request,
            200,
            dump_json(
                {
                    # "degraded": the store refuses writes for now (disk
                    # full, database away); reads of what this daemon
                    # holds still answer, new jobs get 503 until it heals
                    "status": "ok" if store["ok"] else "degraded",
                    "running": self.runner.running_count,
                    "queued": self.runner.queued_count,
                    "version": __version__,
                    "store": store,
                }
            ),
        )

    @app.route("/metrics", methods=["GET"])
    def metrics_text(self, request: IRequest) -> bytes:
        if self.metrics is None:
            return json_error(request, 404, "metrics are not enabled")
        body: bytes
        body, content_type = self.metrics.render()
        request.setHeader(b"Content-Type", content_type)
        return body

    @app.route("/openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        return json_response(request, 200, OPENAPI)

    # -- the dashboard's static files -----------------------------------

    @app.route("/ui", methods=["GET"])
    def dashboard_redirect(self, request: IRequest) -> bytes:
        return web.redirect_to_index(request)

    @app.route("/ui/", methods=["GET"])
    @app.route("/ui/<path:name>", methods=["GET"])
    def dashboard(self, request: IRequest, name: str = "index.html") -> bytes:
        return web.serve(request, name)

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

    @app.handle_errors(StoreUnavailable)
    def store_unavailable(self, request: IRequest, failure: Failure) -> bytes:
        # A read the store could not answer (I/O error, damaged file): the
        # store's trouble, not a bug here; registered before the catch-all.
        self.log.error(
            "answering {method} {path}: {error}", method=request.method, path=request.path, error=failure.value
        )
        request.setHeader(b"Retry-After", b"%d" % self.limits.retry_after)
        return json_error(request, 503, str(failure.value))

    @app.handle_errors(Exception)
    def internal_error(self, request: IRequest, failure: Failure) -> bytes:
        self.log.failure("internal error answering {method} {path}", failure, method=request.method, path=request.path)
        return json_error(request, 500, "internal error; the daemon's log has the details")


class _PullProducer:
    """The transport's side of a follower: it asks for more (``resume``)
    once what was written has been sent."""

    wanted = False

    def resumeProducing(self) -> None:
        self.wanted = True
        self._pump()

    def pauseProducing(self) -> None:
        self.wanted = False

    def stopProducing(self) -> None:
        self._stop()

    def _pump(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError


class _Follower(_PullProducer):
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
        request.registerProducer(self, False)  # type: ignore[attr-defined]

    def _output(self, fd: int) -> None:
        if fd in (self.fd, 0):
            self._pump()

    def _pump(self) -> None:
        if not self.wanted or self.done.called:
            return
        start, data = self.buffer.read(self.offset)
        if start != self.offset:
            # The next bytes lie past a gap the buffer dropped (--max-output).
            # End this response: the client reconnects at its offset and learns
            # of the gap from X-Output-Offset, instead of counting the bytes
            # after the gap as if they came right after the ones it has.
            self._stop()
            self.done.callback(b"")
            return
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
        if self.request.producer is self:  # type: ignore[attr-defined]
            self.request.unregisterProducer()


log = Logger(namespace="httprunner.api")


class _RemoteFollower(_PullProducer):
    """Stream the output of a job that runs on another node, as a pull
    producer, by polling the store (which the owner updates every 0.5 s)."""

    def __init__(self, request: IRequest, store: Any, reactor: Any, job_id: str, fd: int, offset: int) -> None:
        self.request = request
        self.store = store
        self.reactor = reactor
        self.job_id = job_id
        self.fd = fd
        self.offset = offset
        self.wanted = False
        self.pending = b""
        self.ended = False
        self.reading: Deferred[Any] | None = None
        self.timer: Any = None
        self.stopped = False
        self.done: Deferred[bytes] = Deferred(lambda _d: self._stop())
        request.registerProducer(self, False)  # type: ignore[attr-defined]

    def _pump(self) -> None:
        if not self.wanted or self.stopped:
            return
        if self.pending:
            data, self.pending = self.pending[:FOLLOW_CHUNK], self.pending[FOLLOW_CHUNK:]
            self.wanted = False
            self.request.write(data)
        elif self.ended:
            self._stop()
            self.done.callback(b"")
        elif self.reading is None and self.timer is None:
            self._read()

    def _read(self) -> None:
        self.timer = None
        self.reading = self.store.read_output(self.job_id, self.fd, self.offset)
        self.reading.addCallbacks(self._got, self._failed)

    def _got(self, result: tuple[int, bytes, bool] | None) -> None:
        self.reading = None
        if self.stopped:
            return
        if result is None:
            self.ended = True  # evicted meanwhile
        else:
            start, data, finished = result
            if start != self.offset:
                # Past a gap the buffer dropped: end the response here, as
                # a local follower does (the client resumes at its offset
                # and learns of the gap from X-Output-Offset).
                self.ended = True
            elif data:
                self.offset = start + len(data)
                self.pending += data
            elif finished:
                self.ended = True
            else:
                self.timer = self.reactor.callLater(REMOTE_POLL, self._tick)
        self._pump()

    def _failed(self, failure: Failure) -> None:
        self.reading = None
        if not failure.check(StoreUnavailable, CancelledError):
            log.failure("following the output of job {job_id} failed", failure, job_id=self.job_id)
        if not self.stopped:
            # The database is away: try again later, the stream stays open.
            self.timer = self.reactor.callLater(REMOTE_POLL * 4, self._tick)

    def _tick(self) -> None:
        self.timer = None
        if self.wanted and not self.stopped:
            self._read()

    def _stop(self) -> None:
        self.stopped = True
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.reading is not None:
            self.reading.cancel()
            self.reading = None
        if self.request.producer is self:  # type: ignore[attr-defined]
            self.request.unregisterProducer()


def _arg(request: IRequest, name: bytes) -> str | None:
    values: list[bytes] | None = request.args.get(name)
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
