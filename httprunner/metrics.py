"""Prometheus metrics of the daemon, on a registry of its own.

:class:`Metrics` is a runner observer (``job_started``/``job_finished``)
plus two hooks for the other layers: ``callback_attempt`` (callbacks) and
``http_request`` (the site's access log).  ``render`` produces the body of
``GET /metrics`` in the Prometheus text format.

The registry is private, not prometheus-client's global ``REGISTRY``: two
daemons built in one process (tests) do not collide, and nothing a library
registers globally leaks into our endpoint.

Label values are bounded: states, streams and callback outcomes are fixed
sets; HTTP routes are reduced to their templates (``/{id}``, never a raw
path with a job id, which would create one series per job).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector

from httprunner import __version__, jobs

#: job durations and queue waits: 1 ms to 1 h (jobs are transcodes,
#: backups and deploys as well as quick commands)
DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
#: spawning takes about a millisecond; finer buckets show fd-count and
#: memory pressure (see STYLE.md: spawn cost grows with open fds)
SPAWN_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip

#: CPU seconds a job used: 1 ms (an echo) to 2 h (a long transcode)
CPU_BUCKETS = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 7200.0,
)  # fmt: skip
#: peak resident set of a job, 1 MiB to 64 GiB in steps of 4x
RSS_BUCKETS = tuple(float(1 << (20 + 2 * i)) for i in range(9))

CALLBACK_OUTCOMES = ("delivered", "retry", "failed", "refused")
STREAMS = ("stdout", "stderr")

#: every route of the API, as a template; anything else is "other"
ROUTES = (
    "/",
    "/{id}",
    "/{id}/",
    "/{id}/stdout",
    "/{id}/stderr",
    "/jobs",
    "/stats",
    "/healthz",
    "/metrics",
    "/openapi.json",
    "/ui",
    "/ui/",
    "/ui/{name}",
)
METHODS = frozenset({"GET", "HEAD", "POST", "DELETE", "PUT", "PATCH", "OPTIONS"})
OTHER = "other"

_FIXED_ROUTES = {route: route for route in ROUTES if "{" not in route}
_ID_ROUTE = re.compile(r"/[^/]+(/|/stdout|/stderr)?")

#: what GET /metrics answers with: the classic text format, which every
#: Prometheus version (and most other scrapers) reads
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4.encode("ascii")


class CountsSource(Protocol):
    """What the gauges read at scrape time (the JobRunner)."""

    @property
    def running_count(self) -> int: ...

    @property
    def queued_count(self) -> int: ...


def route_template(path: str) -> str:
    """The bounded route label for a route template or a raw request path.

    ``/{id}`` stays ``/{id}``; ``/0123...abcd/stdout`` becomes
    ``/{id}/stdout``; a path no route serves (``/a/b/c``) is ``other``.
    Any single path segment maps to ``/{id}``, as Klein routes it (an
    ill-formed id answers 404 from the same route).
    """
    if path in ROUTES:
        return path
    path = path.split("?", 1)[0]
    fixed = _FIXED_ROUTES.get(path)
    if fixed is not None:
        return fixed
    if path.startswith("/ui/"):
        # The dashboard's files: a handful of names, but any path could be asked.
        return "/ui/{name}"
    match = _ID_ROUTE.fullmatch(path)
    if match is None:
        return OTHER
    return "/{id}" + (match.group(1) or "")


class StoreCollector(Collector):
    """The store's state at scrape time: whether it takes writes, the
    writes not yet in, and a cluster's claims, hints and lost jobs."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        health = self.store.health()
        kind = str(health.get("kind", ""))
        ok = GaugeMetricFamily(
            "httprunner_store_up", "1 while the store takes writes, 0 while it refuses them.", labels=["kind"]
        )
        ok.add_metric([kind], 1.0 if health.get("ok") else 0.0)
        yield ok
        yield GaugeMetricFamily(
            "httprunner_store_backlog", "Writes handed to the store and not yet in.", value=health.get("backlog", 0)
        )
        for key, help_text in CLUSTER_COUNTERS.items():
            if key in health:
                yield CounterMetricFamily("httprunner_cluster_" + key, help_text, value=health[key])


#: the cluster's counters (PostgresJobStore.counters) as metrics
CLUSTER_COUNTERS = {
    "claims": "Queued jobs this node claimed from the shared queue.",
    "notifies_sent": "NOTIFY hints this node sent (queued jobs, cancel requests).",
    "notifies_received": "NOTIFY hints this node received.",
    "lost_declared": "Jobs of dead nodes this node declared lost.",
    "statements": "SQL statements this node sent to the database.",
}


class Metrics:
    """The daemon's counters, gauges and histograms.

    Labelled children are created up front for every state, stream and
    outcome, so the per-job hooks are an attribute read and an increment.
    """

    def __init__(self, runner: CountsSource, registry: CollectorRegistry | None = None, store: Any = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.runner = runner
        r = self.registry
        if store is not None:
            r.register(StoreCollector(store))

        self.jobs_started = Counter("httprunner_jobs_started", "Jobs whose process was spawned.", registry=r)
        finished = Counter(
            "httprunner_jobs_finished",
            "Jobs that reached a terminal state, by that state.",
            ["state"],
            registry=r,
        )
        self._finished_by_state = {
            state: finished.labels(state) for state in jobs.STATES if state in jobs.TERMINAL_STATES
        }
        self.jobs_finished = finished

        running = Gauge("httprunner_jobs_running", "Jobs whose process is running now.", registry=r)
        running.set_function(lambda: self.runner.running_count)
        queued = Gauge("httprunner_jobs_queued", "Jobs waiting for a free slot now.", registry=r)
        queued.set_function(lambda: self.runner.queued_count)

        self.queue_wait = Histogram(
            "httprunner_job_queue_wait_seconds",
            "Time from submission to spawn.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.spawn_latency = Histogram(
            "httprunner_job_spawn_seconds",
            "Time spawnProcess took to start a job's process.",
            buckets=SPAWN_BUCKETS,
            registry=r,
        )
        self.job_duration = Histogram(
            "httprunner_job_duration_seconds",
            "Run time of jobs whose process started, from spawn to exit.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.job_cpu = Histogram(
            "httprunner_job_cpu_seconds",
            "User + system CPU time of finished jobs (the process and the children it waited for).",
            buckets=CPU_BUCKETS,
            registry=r,
        )
        self.job_max_rss = Histogram(
            "httprunner_job_max_rss_bytes",
            "Peak resident set size of finished jobs, where known (above the daemon's own size).",
            buckets=RSS_BUCKETS,
            registry=r,
        )
        output = Counter(
            "httprunner_job_output_bytes",
            "Bytes jobs wrote, by stream (counted when the job finishes, including dropped bytes).",
            ["stream"],
            registry=r,
        )
        self._stdout_bytes = output.labels("stdout")
        self._stderr_bytes = output.labels("stderr")
        self.output_bytes = output

        callbacks = Counter(
            "httprunner_callback_attempts",
            "Callback delivery attempts, by outcome (retry: failed, another attempt follows).",
            ["outcome"],
            registry=r,
        )
        self._callbacks = {outcome: callbacks.labels(outcome) for outcome in CALLBACK_OUTCOMES}
        self.callback_attempts = callbacks

        self.http_requests = Counter(
            "httprunner_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self._http_children: dict[tuple[str, str, int], Any] = {}

        Info("httprunner_build", "The httprunner version.", registry=r).info({"version": __version__})
        ProcessCollector(registry=r)

    # -- runner observer ------------------------------------------------

    def job_started(self, job: Any, spawn_seconds: float) -> None:
        self.jobs_started.inc()
        if job.started_at is not None:
            # Wall-clock timestamps: a clock step could make this negative.
            self.queue_wait.observe(max(0.0, job.started_at - job.created_at))
        self.spawn_latency.observe(spawn_seconds)

    def job_finished(self, job: Any) -> None:
        child = self._finished_by_state.get(job.state)
        if child is None:
            child = self._finished_by_state[job.state] = self.jobs_finished.labels(job.state)
        child.inc()
        if job.duration is not None:
            self.job_duration.observe(job.duration)
        if job.cpu_seconds is not None:
            self.job_cpu.observe(job.cpu_seconds)
        if job.max_rss_bytes is not None:
            self.job_max_rss.observe(job.max_rss_bytes)
        if job.stdout.total:
            self._stdout_bytes.inc(job.stdout.total)
        if job.stderr.total:
            self._stderr_bytes.inc(job.stderr.total)

    def job_recorded(self, job: Any) -> None:
        pass

    # -- other hooks ----------------------------------------------------

    def callback_attempt(self, outcome: str) -> None:
        """Count one delivery attempt: delivered, retry, failed or refused."""
        child = self._callbacks.get(outcome)
        if child is None:
            raise ValueError(
                "unknown callback outcome %r; expected one of %s" % (outcome, ", ".join(CALLBACK_OUTCOMES))
            )
        child.inc()

    def http_request(self, route: str, method: str, status: int) -> None:
        """Count one answered request.

        ``route`` may be a template (``/{id}``) or the raw path; either way
        the label is a template or ``other``, and a method outside the
        usual HTTP ones is ``other``, so no client can grow the series.
        """
        key = (route, method, status)
        child = self._http_children.get(key)
        if child is None:
            label_method = method if method in METHODS else OTHER
            label_status = str(status) if 100 <= status <= 599 else OTHER
            child = self.http_requests.labels(route_template(route), label_method, label_status)
            # Cache only bounded keys: a raw path is a new key per job.
            if route in ROUTES and label_method == method:
                self._http_children[key] = child
        child.inc()

    # -- exposition -----------------------------------------------------

    def render(self) -> tuple[bytes, bytes]:
        """``(body, content_type)`` of the Prometheus text format."""
        return generate_latest(self.registry), CONTENT_TYPE
