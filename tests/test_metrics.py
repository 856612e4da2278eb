"""Unit tests of httprunner.metrics: what a scrape shows after job events."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from httprunner import jobs
from httprunner.jobs import Job, JobSpec
from httprunner.metrics import ROUTES, Metrics, route_template


class FakeRunner:
    """The two counts the gauges read, changeable between scrapes."""

    def __init__(self) -> None:
        self.running_count = 0
        self.queued_count = 0


def make_job(job_id: str = "a" * 40, *, created_at: float = 1000.0) -> Job:
    spec = JobSpec(command="echo", arguments=[], program="/fake/bin/echo", args=(), env={})
    return Job(job_id=job_id, spec=spec, created_at=created_at, max_output=1024)


def start(job: Job, *, at: float) -> Job:
    job.state = jobs.RUNNING
    job.started_at = at
    job.pid = 4242
    return job


def finish(job: Job, state: str, *, duration: float | None, stdout: bytes = b"", stderr: bytes = b"") -> Job:
    job.stdout.append(stdout)
    job.stderr.append(stderr)
    job.state = state
    job.duration = duration
    job.code = 0 if state == jobs.SUCCEEDED else 1
    return job


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse the rendered text into {(sample name, sorted labels): value}."""
    body, content_type = metrics.render()
    assert content_type.startswith(b"text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


@pytest.fixture
def metrics(runner: FakeRunner) -> Metrics:
    return Metrics(runner)


def test_every_metric_name_starts_with_httprunner_or_is_a_process_metric(metrics: Metrics) -> None:
    body, _ = metrics.render()
    names = {family.name for family in text_string_to_metric_families(body.decode())}
    ours = {name for name in names if name.startswith("httprunner_")}
    assert {
        "httprunner_jobs_started",
        "httprunner_jobs_finished",
        "httprunner_jobs_running",
        "httprunner_jobs_queued",
        "httprunner_job_queue_wait_seconds",
        "httprunner_job_spawn_seconds",
        "httprunner_job_duration_seconds",
        "httprunner_job_output_bytes",
        "httprunner_callback_attempts",
        "httprunner_http_requests",
        "httprunner_build_info",
    } <= ours
    assert names - ours <= {name for name in names if name.startswith("process_")}
    assert "process_resident_memory_bytes" in names or "process_cpu_seconds" in names


def test_a_fresh_scrape_shows_every_terminal_state_at_zero(metrics: Metrics) -> None:
    samples = scrape(metrics)
    for state in jobs.TERMINAL_STATES:
        assert value(samples, "httprunner_jobs_finished_total", state=state) == 0
    assert value(samples, "httprunner_jobs_started_total") == 0


def test_job_started_counts_and_observes_queue_wait(metrics: Metrics) -> None:
    metrics.job_started(start(make_job(created_at=1000.0), at=1002.0), 0.001)
    metrics.job_started(start(make_job("b" * 40, created_at=1000.0), at=1000.0005), 0.001)
    samples = scrape(metrics)
    assert value(samples, "httprunner_jobs_started_total") == 2
    assert value(samples, "httprunner_job_queue_wait_seconds_count") == 2
    assert value(samples, "httprunner_job_queue_wait_seconds_sum") == pytest.approx(2.0005)
    assert value(samples, "httprunner_job_queue_wait_seconds_bucket", le="0.001") == 1
    assert value(samples, "httprunner_job_queue_wait_seconds_bucket", le="1.0") == 1
    assert value(samples, "httprunner_job_queue_wait_seconds_bucket", le="2.5") == 2


def test_a_clock_step_back_never_makes_a_negative_wait(metrics: Metrics) -> None:
    metrics.job_started(start(make_job(created_at=1000.0), at=990.0), 0.001)
    samples = scrape(metrics)
    assert value(samples, "httprunner_job_queue_wait_seconds_sum") == 0
    assert value(samples, "httprunner_job_queue_wait_seconds_bucket", le="0.001") == 1


def test_spawn_latency_is_observed(metrics: Metrics) -> None:
    assert value(scrape(metrics), "httprunner_job_spawn_seconds_count") == 0
    metrics.job_started(start(make_job("b" * 40), at=1000.0), 0.0008)
    samples = scrape(metrics)
    assert value(samples, "httprunner_job_spawn_seconds_count") == 1
    assert value(samples, "httprunner_job_spawn_seconds_bucket", le="0.0005") == 0
    assert value(samples, "httprunner_job_spawn_seconds_bucket", le="0.001") == 1


def test_job_finished_counts_by_state_and_observes_duration(metrics: Metrics) -> None:
    metrics.job_finished(finish(start(make_job(), at=1000.0), jobs.SUCCEEDED, duration=0.003))
    metrics.job_finished(finish(start(make_job("b" * 40), at=1000.0), jobs.FAILED, duration=3000.0))
    metrics.job_finished(finish(start(make_job("c" * 40), at=1000.0), jobs.SUCCEEDED, duration=0.5))
    samples = scrape(metrics)
    assert value(samples, "httprunner_jobs_finished_total", state="succeeded") == 2
    assert value(samples, "httprunner_jobs_finished_total", state="failed") == 1
    assert value(samples, "httprunner_jobs_finished_total", state="timed_out") == 0
    assert value(samples, "httprunner_job_duration_seconds_count") == 3
    assert value(samples, "httprunner_job_duration_seconds_bucket", le="0.005") == 1
    assert value(samples, "httprunner_job_duration_seconds_bucket", le="1800.0") == 2
    assert value(samples, "httprunner_job_duration_seconds_bucket", le="3600.0") == 3


def test_a_job_that_never_ran_counts_its_state_but_no_duration(metrics: Metrics) -> None:
    job = finish(make_job(), jobs.CANCELED, duration=None)
    metrics.job_finished(job)
    samples = scrape(metrics)
    assert value(samples, "httprunner_jobs_finished_total", state="canceled") == 1
    assert value(samples, "httprunner_job_duration_seconds_count") == 0


def test_output_bytes_count_everything_written_per_stream_including_dropped(metrics: Metrics) -> None:
    # max_output is 1024: 5000 bytes of stdout keep 1024 and drop the rest,
    # but the counter says what the job wrote.
    metrics.job_finished(
        finish(start(make_job(), at=1.0), jobs.SUCCEEDED, duration=1.0, stdout=b"x" * 5000, stderr=b"e\n")
    )
    metrics.job_finished(finish(start(make_job("b" * 40), at=1.0), jobs.SUCCEEDED, duration=1.0, stdout=b"ok\n"))
    samples = scrape(metrics)
    assert value(samples, "httprunner_job_output_bytes_total", stream="stdout") == 5003
    assert value(samples, "httprunner_job_output_bytes_total", stream="stderr") == 2


def costed(job_id: str, cpu_seconds: float | None, max_rss_bytes: int | None) -> Job:
    job = make_job(job_id)
    job.cpu_seconds = cpu_seconds
    job.max_rss_bytes = max_rss_bytes
    return finish(start(job, at=1.0), jobs.SUCCEEDED, duration=1.0)


def test_what_finished_jobs_cost_is_observed_when_known(metrics: Metrics) -> None:
    metrics.job_finished(costed("a" * 40, 0.002, None))  # peak unknown (under the daemon's)
    metrics.job_finished(costed("b" * 40, 42.0, 300 << 20))
    metrics.job_finished(costed("c" * 40, None, None))  # never ran
    samples = scrape(metrics)
    assert value(samples, "httprunner_job_cpu_seconds_count") == 2
    assert value(samples, "httprunner_job_cpu_seconds_sum") == pytest.approx(42.002)
    assert value(samples, "httprunner_job_cpu_seconds_bucket", le="0.005") == 1
    assert value(samples, "httprunner_job_cpu_seconds_bucket", le="60.0") == 2
    assert value(samples, "httprunner_job_max_rss_bytes_count") == 1
    assert value(samples, "httprunner_job_max_rss_bytes_bucket", le=floatToGoString(256 << 20)) == 0
    assert value(samples, "httprunner_job_max_rss_bytes_bucket", le=floatToGoString(1 << 30)) == 1


def test_running_and_queued_gauges_read_the_runner_at_scrape_time(runner: FakeRunner, metrics: Metrics) -> None:
    runner.running_count, runner.queued_count = 3, 7
    samples = scrape(metrics)
    assert value(samples, "httprunner_jobs_running") == 3
    assert value(samples, "httprunner_jobs_queued") == 7
    runner.running_count, runner.queued_count = 0, 1
    samples = scrape(metrics)
    assert value(samples, "httprunner_jobs_running") == 0
    assert value(samples, "httprunner_jobs_queued") == 1


def test_callback_attempts_count_by_outcome(metrics: Metrics) -> None:
    for outcome in ("retry", "retry", "delivered", "failed", "refused"):
        metrics.callback_attempt(outcome)
    samples = scrape(metrics)
    assert value(samples, "httprunner_callback_attempts_total", outcome="retry") == 2
    assert value(samples, "httprunner_callback_attempts_total", outcome="delivered") == 1
    assert value(samples, "httprunner_callback_attempts_total", outcome="failed") == 1
    assert value(samples, "httprunner_callback_attempts_total", outcome="refused") == 1


def test_an_unknown_callback_outcome_is_a_programming_error(metrics: Metrics) -> None:
    with pytest.raises(ValueError):
        metrics.callback_attempt("maybe")


def test_http_requests_are_labelled_by_route_template_never_raw_path(metrics: Metrics) -> None:
    for n in range(50):
        job_id = "%040x" % n
        metrics.http_request("/" + job_id, "GET", 200)
        metrics.http_request("/%s/stdout" % job_id, "GET", 200)
    metrics.http_request("/{id}", "DELETE", 202)
    metrics.http_request("/", "POST", 202)
    metrics.http_request("/jobs", "GET", 200)
    samples = scrape(metrics)
    requests = {labels: v for (name, labels), v in samples.items() if name == "httprunner_http_requests_total"}
    assert requests == {
        (("method", "GET"), ("route", "/{id}"), ("status", "200")): 50,
        (("method", "GET"), ("route", "/{id}/stdout"), ("status", "200")): 50,
        (("method", "DELETE"), ("route", "/{id}"), ("status", "202")): 1,
        (("method", "POST"), ("route", "/"), ("status", "202")): 1,
        (("method", "GET"), ("route", "/jobs"), ("status", "200")): 1,
    }


def test_unknown_paths_and_methods_collapse_into_other(metrics: Metrics) -> None:
    for n in range(20):
        metrics.http_request("/x/y/%d" % n, "BREW%d" % n, 404)
    samples = scrape(metrics)
    requests = {labels: v for (name, labels), v in samples.items() if name == "httprunner_http_requests_total"}
    assert requests == {(("method", "other"), ("route", "other"), ("status", "404")): 20}


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/", "/"),
        ("/jobs", "/jobs"),
        ("/healthz", "/healthz"),
        ("/metrics", "/metrics"),
        ("/openapi.json", "/openapi.json"),
        ("/" + "f" * 40, "/{id}"),
        ("/" + "f" * 40 + "/", "/{id}/"),
        ("/" + "f" * 40 + "/stderr", "/{id}/stderr"),
        ("/" + "f" * 40 + "?wait=3", "/{id}"),
        ("/not-an-id", "/{id}"),
        ("/stats", "/stats"),
        ("/ui", "/ui"),
        ("/ui/", "/ui/"),
        ("/ui/app.js", "/ui/{name}"),
        ("/ui/../../etc/passwd", "/ui/{name}"),
        ("/a/b", "other"),
        ("//", "other"),
        ("", "other"),
    ],
)
def test_route_template(path: str, template: str) -> None:
    assert route_template(path) == template
    assert template in ROUTES or template == "other"


def test_each_metrics_object_has_its_own_registry(runner: FakeRunner) -> None:
    first, second = Metrics(runner), Metrics(runner)
    first.jobs_started.inc()
    assert value(scrape(first), "httprunner_jobs_started_total") == 1
    assert value(scrape(second), "httprunner_jobs_started_total") == 0
    assert REGISTRY.get_sample_value("httprunner_jobs_started_total") is None


def test_a_given_registry_is_used(runner: FakeRunner) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(runner, registry)
    metrics.jobs_started.inc()
    assert registry.get_sample_value("httprunner_jobs_started_total") == 1


def test_the_build_info_names_the_version(metrics: Metrics) -> None:
    from httprunner import __version__

    assert value(scrape(metrics), "httprunner_build_info", version=__version__) == 1


class FakeClusterStore:
    """What the store collector reads: a cluster store's health()."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {
            "kind": "postgresql",
            "durable": True,
            "ok": True,
            "last_error": None,
            "backlog": 0,
            "claims": 0,
            "notifies_sent": 0,
            "notifies_received": 0,
            "lost_declared": 0,
        }

    def health(self) -> dict[str, Any]:
        return dict(self.state)


def test_the_store_state_is_read_at_scrape_time(runner: FakeRunner) -> None:
    store = FakeClusterStore()
    metrics = Metrics(runner, registry=CollectorRegistry(auto_describe=True), store=store)
    samples = scrape(metrics)
    assert value(samples, "httprunner_store_up", kind="postgresql") == 1.0
    assert value(samples, "httprunner_store_backlog") == 0.0
    store.state.update(ok=False, last_error="connection refused", backlog=7, claims=12, lost_declared=2)
    samples = scrape(metrics)
    assert value(samples, "httprunner_store_up", kind="postgresql") == 0.0
    assert value(samples, "httprunner_store_backlog") == 7.0
    assert value(samples, "httprunner_cluster_claims_total") == 12.0
    assert value(samples, "httprunner_cluster_lost_declared_total") == 2.0


def test_a_single_daemon_store_shows_no_cluster_counters(runner: FakeRunner) -> None:
    from httprunner.store import MemoryJobStore

    metrics = Metrics(runner, registry=CollectorRegistry(auto_describe=True), store=MemoryJobStore(1))
    samples = scrape(metrics)
    assert value(samples, "httprunner_store_up", kind="memory") == 1.0
    assert not [name for name, _ in samples if name.startswith("httprunner_cluster_")]
