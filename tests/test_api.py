"""Unit tests of the Klein app, in memory: StubTreq over a runner on a fake reactor."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.error import ProcessDone
from twisted.python.failure import Failure

from httprunner.api import JobAPI, Limits, _Follower
from httprunner.callbacks import CallbackGuard
from httprunner.policy import Policy
from httprunner.runner import JobRunner, Settings
from httprunner.store import MemoryJobStore

from .fakes import FakeProcessReactor, result_of


class App:
    def __init__(self, tmp_path: Any, **limits: Any) -> None:
        program = tmp_path / "prog"
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
        self.program = str(program)
        self.reactor = FakeProcessReactor()
        self.store = MemoryJobStore(100)
        self.runner = JobRunner(
            reactor=self.reactor,
            store=self.store,
            settings=Settings(max_running=1, max_queued=1),
            spawn=self.reactor.spawnProcess,
            monotonic=self.reactor.seconds,
            killpg=lambda pid, sig: None,
        )
        policy = Policy.from_options(
            whitelist=None, policy_file=None, pass_env=[], allow_env=["ALLOWED"], environ={"PATH": str(tmp_path)}
        )
        self.api = JobAPI(
            runner=self.runner, store=self.store, policy=policy, limits=Limits(**limits), callback_guard=CallbackGuard()
        )
        self.treq = StubTreq(self.api.resource())

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, bytes]:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        d = self.treq.request(method, "http://127.0.0.1" + path, data=data)
        self.treq.flush()
        response = self.successful(d)
        content = self.successful(response.content())
        return response.code, response.headers, content

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        code, _, content = self.call(method, path, body)
        return code, json.loads(content)

    @staticmethod
    def successful(d: Any) -> Any:
        results: list[Any] = []
        d.addBoth(results.append)
        assert results, "no answer yet"
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def finish(self, job_id: str, output: bytes = b"") -> None:
        job = result_of(self.store.get(job_id))
        transport = next(t for t in self.reactor.spawned if t.pid == job.pid)
        if output:
            transport.proto.childDataReceived(1, output)
        transport.proto.processExited(Failure(ProcessDone(0)))
        transport.proto.processEnded(Failure(ProcessDone(0)))
        for pipe in transport.pipes.values():
            pipe.close()


@pytest.fixture
def app(tmp_path: Any) -> App:
    return App(tmp_path)


def test_submit_answers_202_with_location_and_seed_keys(app: App) -> None:
    code, headers, body = app.call("POST", "/", {"command": "prog", "args": "a  b"})
    job = json.loads(body)
    assert code == 202 and headers.getRawHeaders("Location") == ["/" + job["id"]]
    assert list(job)[:7] == ["stderr", "stdout", "id", "code", "command", "arguments", "err"]
    assert job["arguments"] == ["a", "b"] and job["state"] == "running"
    assert app.reactor.spawned[0].args == [app.program, "a", "b"]


def test_404_405_and_bad_ids_are_json(app: App) -> None:
    code, error = app.json("GET", "/nothing/here")
    assert code == 404 and set(error) == {"message", "error"}
    code, headers, body = app.call("PATCH", "/")
    assert code == 405 and headers.getRawHeaders("Allow") == ["POST"]
    assert app.json("GET", "/" + "A" * 40)[0] == 404  # ids are lowercase hex only


def test_arguments_over_execve_limits_are_400_before_spawning(app: App) -> None:
    code, error = app.json("POST", "/", {"command": "prog", "args": ["x" * 200_000]})
    assert code == 400 and "limit" in error["error"]
    many = ["y" * 100_000] * 30
    assert app.json("POST", "/", {"command": "prog", "args": many})[0] == 400
    assert app.reactor.spawned == []


def test_env_names_must_be_allowed(app: App) -> None:
    assert app.json("POST", "/", {"command": "prog", "env": {"ALLOWED": "1"}})[0] == 202
    code, error = app.json("POST", "/", {"command": "prog", "env": {"LD_PRELOAD": "/x.so"}})
    assert code == 400 and "LD_PRELOAD" in error["error"]


def test_timeout_ceiling(tmp_path: Any) -> None:
    app = App(tmp_path, default_timeout=10.0, max_timeout=60.0)
    code, job = app.json("POST", "/", {"command": "prog"})
    assert job["timeout"] == 10.0
    code, error = app.json("POST", "/", {"command": "prog", "timeout": 61})
    assert code == 400 and "maximum of 60" in error["error"]


def test_queue_full_is_503_with_retry_after(app: App) -> None:
    app.json("POST", "/", {"command": "prog"})
    assert app.json("POST", "/", {"command": "prog"})[1]["state"] == "queued"
    code, headers, body = app.call("POST", "/", {"command": "prog"})
    assert code == 503 and headers.getRawHeaders("Retry-After") == ["1"]


def test_long_poll_answers_at_the_end_or_after_the_wait(app: App) -> None:
    job = app.json("POST", "/", {"command": "prog"})[1]
    d = app.treq.get("http://127.0.0.1/%s?wait=30" % job["id"])
    app.treq.flush()
    answered: list[Any] = []
    d.addBoth(lambda r: answered.append(r) or r)
    assert answered == []
    app.reactor.advance(10)
    app.finish(job["id"])
    app.treq.flush()
    assert json.loads(app.successful(app.successful(d).content()))["state"] == "succeeded"
    # a wait on an unfinished job ends after the wait, capped by max_wait
    other = app.json("POST", "/", {"command": "prog"})[1]
    d = app.treq.get("http://127.0.0.1/%s?wait=5" % other["id"])
    app.treq.flush()
    app.reactor.advance(5)
    app.treq.flush()
    assert json.loads(app.successful(app.successful(d).content()))["code"] is None
    assert app.runner._waiters.get(other["id"]) in (None, [])
    assert app.json("GET", "/%s?wait=abc" % other["id"])[0] == 400


def test_raw_output_with_offsets(app: App) -> None:
    job = app.json("POST", "/", {"command": "prog"})[1]
    app.finish(job["id"], b"hello world")
    code, headers, body = app.call("GET", "/%s/stdout?offset=6" % job["id"])
    assert (code, body, headers.getRawHeaders("X-Output-Offset")) == (200, b"world", ["6"])
    assert headers.getRawHeaders("Content-Type") == ["application/octet-stream"]
    assert app.call("GET", "/%s/stdout?offset=99" % job["id"])[2] == b""
    assert app.call("GET", "/%s/stderr" % job["id"])[2] == b""
    assert app.json("GET", "/%s/stdout?offset=-1" % job["id"])[0] == 400
    assert app.json("GET", "/%s/stdout?follow=maybe" % job["id"])[0] == 400


class _Request:
    """The slice of IRequest a follower uses."""

    def __init__(self) -> None:
        self.producer: Any = None
        self.written: list[bytes] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_follow_streams_as_the_client_reads_and_a_hangup_leaks_nothing(app: App) -> None:
    job = result_of(app.store.get(app.json("POST", "/", {"command": "prog"})[1]["id"]))
    proto = next(t for t in app.reactor.spawned if t.pid == job.pid).proto
    request = _Request()
    follower = _Follower(request, app.runner, job, 1, 0)
    follower.resumeProducing()
    proto.childDataReceived(1, b"one ")
    assert request.written == [b"one "]
    proto.childDataReceived(1, b"two ")
    assert request.written == [b"one "], "nothing more until the transport asks"
    follower.resumeProducing()
    assert request.written == [b"one ", b"two "]
    follower.done.cancel()  # what Klein does when the client hangs up
    follower.done.addErrback(lambda f: None)
    assert app.runner._watchers == {} and request.producer is None
    app.finish(job.id)


def test_follow_ends_with_the_job(app: App) -> None:
    job = result_of(app.store.get(app.json("POST", "/", {"command": "prog"})[1]["id"]))
    request = _Request()
    follower = _Follower(request, app.runner, job, 1, 0)
    follower.resumeProducing()
    app.finish(job.id, b"last")
    assert request.written == [b"last"]
    follower.resumeProducing()
    assert follower.done.called and request.producer is None


def test_delete_cancels_and_is_idempotent(app: App) -> None:
    running = app.json("POST", "/", {"command": "prog"})[1]
    queued = app.json("POST", "/", {"command": "prog"})[1]
    code, job = app.json("DELETE", "/" + queued["id"])
    assert (code, job["state"]) == (202, "canceled")
    assert app.json("DELETE", "/" + queued["id"])[0] == 200
    app.finish(running["id"])
    assert app.json("DELETE", "/" + running["id"])[0] == 200


def test_listing_and_health(app: App) -> None:
    first = app.json("POST", "/", {"command": "prog"})[1]
    second = app.json("POST", "/", {"command": "prog"})[1]
    listing = app.json("GET", "/jobs?state=queued&state=running")[1]["jobs"]
    assert [j["id"] for j in listing] == [second["id"], first["id"]]
    health = app.json("GET", "/healthz")[1]
    assert (health["running"], health["queued"]) == (1, 1)
    app.finish(first["id"])


def test_openapi_is_served_as_packaged(app: App) -> None:
    code, headers, body = app.call("GET", "/openapi.json")
    packaged = open(os.path.join(os.path.dirname(__file__), "..", "httprunner", "openapi.json"), "rb").read()
    assert code == 200 and body == packaged


def test_follow_ends_the_response_at_a_dropped_gap(app: App) -> None:
    # A reader of the head must not take the tail for what follows the head:
    # the response ends at the gap and a new one says where it resumes.
    from httprunner.output import OutputBuffer

    job = result_of(app.store.get(app.json("POST", "/", {"command": "prog"})[1]["id"]))
    job.stdout = OutputBuffer(8)
    job.stdout.append(b"0123")
    request = _Request()
    follower = _Follower(request, app.runner, job, 1, 0)
    follower.resumeProducing()
    assert request.written == [b"0123"]
    job.stdout.append(b"abcdefghij")  # the head is full: 6 bytes fall out of the middle
    app.runner.process_output(job, 1)
    follower.resumeProducing()
    assert request.written == [b"0123"] and follower.done.called and request.producer is None
    code, headers, body = app.call("GET", "/%s/stdout?offset=4" % job.id)
    assert (body, headers.getRawHeaders("X-Output-Offset")) == (b"ghij", ["10"])
    app.finish(job.id)


def _finished_jobs(app: App, *commands: list[str]) -> list[str]:
    ids = []
    for args in commands:
        job = app.json("POST", "/", {"command": "prog", "args": args})[1]
        app.finish(job["id"])
        ids.append(job["id"])
    return ids


def test_the_text_filter_matches_the_command_line_in_any_case(app: App) -> None:
    backup, restore, other = _finished_jobs(app, ["Backup", "/srv/Data"], ["restore", "/srv/data"], ["x y"])

    def found(query: str) -> list[str]:
        code, answer = app.json("GET", "/jobs?" + query)
        assert code == 200, answer
        return [job["id"] for job in answer["jobs"]]

    assert found("q=srv/DATA") == [restore, backup]
    assert found("q=backup") == [backup]
    # command and arguments joined by single spaces: "prog x y"
    assert found("q=prog%20x%20y") == [other]
    assert found("q=prog%20%20x") == []
    assert found("q=nothing-like-it") == []
    assert found("q=") == [other, restore, backup]
    # with the other filters: the limit counts matches, the state filter applies first
    assert found("q=srv&limit=1") == [restore]
    assert found("q=srv&state=failed") == []


def test_a_doubled_slash_is_an_unknown_route_not_a_redirect(app: App) -> None:
    for path in ("/jobs//", "/ui//index.html"):
        code, body = app.json("GET", path)
        assert code == 404 and body["message"] == "Not Found", (path, code, body)


def test_the_text_filter_has_a_length_cap(app: App) -> None:
    code, body = app.json("GET", "/jobs?q=" + "a" * 501)
    assert code == 400 and "at most 500" in body["error"]
    assert app.json("GET", "/jobs?q=" + "a" * 500)[0] == 200


def test_healthz_shows_the_store(app: App) -> None:
    code, body = app.json("GET", "/healthz")
    assert code == 200 and body["status"] == "ok"
    assert body["store"] == {"kind": "memory", "durable": False, "ok": True, "last_error": None, "backlog": 0}


@pytest.mark.parametrize("path", ["/jobs", "/healthz", "/metrics", "/openapi.json", "/stats"])
def test_a_wrong_method_on_a_fixed_path_is_405_with_allow_not_an_unknown_job(app: App, path: str) -> None:
    # DELETE /jobs reached the /<id> route and answered "no job with id 'jobs'".
    code, headers, body = app.call("DELETE", path)
    assert code == 405 and headers.getRawHeaders("Allow") == ["GET"]
    assert json.loads(body)["message"] == "Method Not Allowed"
