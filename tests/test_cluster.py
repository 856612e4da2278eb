"""The cluster for real: two or three ``twistd`` nodes on one PostgreSQL.

Each test gets a schema of its own (``--store-schema t_<random>``, dropped
afterwards) and starts real nodes with short heartbeats.  Every fault is
produced for real: SIGKILL, SIGSTOP/SIGCONT, a TCP proxy between a node and
the server that the test cuts and restores.  Every check is what a user
sees: answers over HTTP, callbacks at a real loopback receiver, processes
in ``/proc``.

The tests run whenever ``HTTPRUNNER_TEST_POSTGRES`` names a database (a
libpq URI; ``.ci/run`` sets it to the machine's server) and are skipped
otherwise.

Two nodes on one machine share its process table and boot id, so a
survivor would recognise (and end) the processes of a node that died on
the same machine.  To see what happens when nodes are on different
machines, a node can be started "elsewhere": in a mount namespace of its
own where ``/proc/sys/kernel/random/boot_id`` reads differently, and as
another user (``nobody``), so it takes every process of the other nodes
for one of another machine and cannot read their environments.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TIMEOUT, Daemon, child_env, twistd_command

PG = os.environ.get("HTTPRUNNER_TEST_POSTGRES", "")
pytestmark = pytest.mark.skipif(
    not PG,
    reason="the cluster tests need PostgreSQL: set HTTPRUNNER_TEST_POSTGRES to a database URI "
    "(postgresql://postgres@127.0.0.1/test)",
)
if PG:
    psycopg = pytest.importorskip("psycopg")

#: the nodes' heartbeat: a node silent for 3 of them is dead
HEARTBEAT = 1.0
#: how much later than the design's bounds a loaded 2-core CI machine may be
SLACK = 3.0
#: a job that writes a line, then waits for a file before it writes another
GATED = "echo first; while [ ! -e %s ]; do sleep 0.05; done; echo second"
#: a job whose process group (a shell and its child) runs until killed
FOREVER = ("sh", "-c", "sleep 300 & wait")


def poll(check: Callable[[], Any], seconds: float, what: str) -> Any:
    """Call ``check`` until it returns something true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("after %.1fs: %s" % (seconds, what))
        time.sleep(0.05)


def group_alive(pgid: int) -> bool:
    """True while any live (non-zombie) process is in process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def job_of(node: Daemon, job_id: str) -> dict[str, Any]:
    status, job = node.api("GET", "/" + job_id)
    assert status == 200, job
    return job


def listing(node: Daemon, query: str = "") -> list[dict[str, Any]]:
    status, page = node.api("GET", "/jobs?limit=1000" + query)
    assert status == 200, page
    return page["jobs"]


def listening(node: Daemon) -> bool:
    try:
        socket.create_connection(("127.0.0.1", node.port), timeout=1).close()
    except OSError:
        return False
    return True


def health(node: Daemon) -> dict[str, Any]:
    status, document = node.api("GET", "/healthz")
    assert status == 200, document
    return document


def metric(node: Daemon, name: str) -> float:
    """One sample of ``/metrics`` (the first line that starts with ``name``)."""
    status, _, body = node.request("GET", "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no %s in /metrics" % name)


def node_view(node: Daemon, name: str) -> dict[str, Any] | None:
    status, stats = node.api("GET", "/stats")
    assert status == 200, stats
    return next((n for n in stats["nodes"] if n["name"] == name), None)


class Receiver:
    """A loopback callback receiver that records every POST it accepts
    (200); it answers 500 to the jobs in ``refuse``."""

    def __init__(self) -> None:
        self.posts: list[tuple[str | None, dict[str, Any]]] = []
        self.refuse: set[str] = set()
        self.refused: Counter[str] = Counter()
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as most receivers: Twisted's client pool takes an
            # HTTP/1.0 answer without "Connection: close" for a persistent
            # connection, and the next POST on it fails (and is retried).
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    refused = body["id"] in owner.refuse
                    if refused:
                        owner.refused[body["id"]] += 1
                    else:
                        owner.posts.append((self.headers.get("webhook-id"), body))
                self.send_response(500 if refused else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            # Three nodes send up to 32 callbacks at once each: a backlog
            # of 5 (the default) would refuse some, and they would retry.
            request_queue_size = 128
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/hook" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def counts(self) -> Counter[str]:
        """Callbacks accepted per job id (the body's, checked against webhook-id)."""
        with self.lock:
            posts = list(self.posts)
        for webhook_id, body in posts:
            assert webhook_id == body["id"]
        return Counter(body["id"] for _, body in posts)

    def bodies(self, job_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for _, body in self.posts if body["id"] == job_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Proxy:
    """A TCP proxy on loopback between one node and PostgreSQL.

    ``cut()`` closes every connection through it and refuses new ones
    (accepted, then closed at once: the client sees the server gone);
    ``restore()`` lets connections through again.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.refusing = False
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                refusing = self.refusing or self.closed
            if refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        self._drop(source, sink)

    def _drop(self, *sockets: socket.socket) -> None:
        for s in sockets:
            with self.lock:
                self.open.discard(s)
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self) -> None:
        with self.lock:
            self.refusing = True
            sockets = list(self.open)
        self._drop(*sockets)

    def restore(self) -> None:
        with self.lock:
            self.refusing = False

    def close(self) -> None:
        with self.lock:
            self.closed = True
        self.cut()
        self.listener.close()


class Cluster:
    """Starts nodes of one cluster (one schema) through ``start_daemon``."""

    def __init__(self, schema: str, start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
        self.schema = schema
        self.start_daemon = start_daemon
        self.tmp_path = tmp_path
        # With a secret, callbacks carry webhook-id (the job id).
        self.secret = tmp_path / "callback-secret"
        self.secret.write_text("cluster-tests-secret\n")

    def options(self, name: str, *extra: str, uri: str = PG, heartbeat: float = HEARTBEAT) -> list[str]:
        return [
            "--store",
            uri,
            "--store-schema",
            self.schema,
            "--node",
            name,
            "--heartbeat",
            str(heartbeat),
            "--kill-grace",
            "0.5",
            "--callback-secret-file",
            str(self.secret),
            *extra,
        ]

    def start(
        self, name: str, *extra: str, uri: str = PG, heartbeat: float = HEARTBEAT, elsewhere: bool = False
    ) -> Daemon:
        wrapper: list[str] = []
        if elsewhere:
            wrapper = self._elsewhere(name)
        node = self.start_daemon(*self.options(name, *extra, uri=uri, heartbeat=heartbeat), wrapper=wrapper)
        # The port is reported when it is bound, before the node joins the
        # cluster; its first answer comes once it has.
        health(node)
        return node

    def start_all(self, *nodes: str | tuple[str, ...] | dict[str, Any]) -> list[Daemon]:
        """Start nodes side by side: each a name, a tuple (name, *options;
        an option given twice: the last wins), or the keywords of start."""

        def start(node: str | tuple[str, ...] | dict[str, Any]) -> Daemon:
            if isinstance(node, dict):
                return self.start(**node)
            return self.start(*((node,) if isinstance(node, str) else node))

        with ThreadPoolExecutor(len(nodes)) as pool:
            return list(pool.map(start, nodes))

    def _elsewhere(self, name: str) -> list[str]:
        """A command prefix that runs a node as if on another machine (see
        the module docstring); it execs twistd, so signals reach it."""
        if os.getuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("a node 'on another machine' needs root and unshare(1) for a mount namespace")
        boot_id = self.tmp_path / ("boot_id-" + name)
        boot_id.write_text("another-machine-%s\n" % secrets.token_hex(8))
        # Its own user too: it cannot read the environment of the other
        # nodes' processes (where it would find the ids of their jobs).
        nobody = pwd.getpwnam("nobody")
        script = (
            'mount --bind "$0" /proc/sys/kernel/random/boot_id'
            ' && twistd="$1" && shift && exec "$twistd" --uid %d --gid %d "$@"' % (nobody.pw_uid, nobody.pw_gid)
        )
        return ["unshare", "--mount", "sh", "-c", script, str(boot_id)]

    def refusal(self, name: str, *extra: str) -> str:
        """Start a node expected to refuse: its last line of output."""
        result = subprocess.run(
            twistd_command("--allow-root", "--listen", "tcp:0:interface=127.0.0.1", *self.options(name, *extra)),
            cwd=self.tmp_path,
            env=child_env(),
            capture_output=True,
            timeout=TIMEOUT,
        )
        output = (result.stdout + result.stderr).decode()
        assert result.returncode != 0, output
        assert "Traceback" not in output, output
        return output.strip().splitlines()[-1]

    def sql(self, statement: str, *args: Any) -> list[Any]:
        with psycopg.connect(PG, autocommit=True) as c:
            cursor = c.execute(statement.replace("{s}", '"%s"' % self.schema), args)
            return cursor.fetchall() if cursor.description else []


@pytest.fixture
def schema() -> Iterator[str]:
    """A schema of this test's own, dropped afterwards (with everything in it)."""
    name = "t_" + secrets.token_hex(6)
    yield name
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute("SET lock_timeout = '10s'")
        c.execute('DROP SCHEMA IF EXISTS "%s" CASCADE' % name)


@pytest.fixture
def cluster(schema: str, start_daemon: Callable[..., Daemon], tmp_path: Path) -> Cluster:
    # Requested after ``schema``: the nodes are stopped before it is dropped.
    return Cluster(schema, start_daemon, tmp_path)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


# -- any node answers -----------------------------------------------------------


def test_a_job_posted_to_one_node_is_followed_awaited_and_canceled_from_another(
    cluster: Cluster, tmp_path: Path
) -> None:
    a, b = cluster.start_all("a", "b")
    gate = tmp_path / "gate"
    job = a.submit("sh", "-c", GATED % gate)
    assert (job["state"], job["node"]) == ("running", "a")

    # b streams a's live output: the first line arrives while the job still
    # waits for the gate (a read that waited for the end would time out).
    conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=10)
    conn.request("GET", "/%s/stdout?follow=1" % job["id"])
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline() == b"first\n"
    assert job_of(b, job["id"])["state"] == "running"
    assert b.api("GET", "/%s?wait=0.3" % job["id"])[1]["code"] is None

    # A long poll on b answers when the job ends on a.
    awaited: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: awaited.update(b.api("GET", "/%s?wait=20" % job["id"])[1]))
    waiter.start()
    gate.touch()
    assert response.read() == b"second\n"
    conn.close()
    waiter.join(TIMEOUT)
    assert (awaited["state"], awaited["node"], awaited["stdout"]) == ("succeeded", "a", "first\nsecond\n")
    status, headers, body = b.request("GET", "/%s/stdout?offset=3" % job["id"])
    assert (status, body, headers["X-Output-Offset"]) == (200, b"st\nsecond\n", "3")

    # DELETE on b cancels a job running on a: its whole process group ends.
    doomed = a.submit(*FOREVER)
    assert group_alive(doomed["pid"])
    status, answer = b.api("DELETE", "/" + doomed["id"])
    asked = time.monotonic()
    assert status == 202, answer
    canceled = poll(
        lambda: (j := job_of(b, doomed["id"]))["state"] != "running" and j, 1 + SLACK, "the cancel took effect"
    )
    print("canceled from another node in %.2fs" % (time.monotonic() - asked))
    assert (canceled["state"], canceled["err"]["code"], canceled["node"]) == ("canceled", "CANCELED", "a")
    poll(lambda: not group_alive(doomed["pid"]), SLACK, "the canceled job's processes are gone")
    assert b.api("DELETE", "/" + doomed["id"])[0] == 200


def test_every_node_lists_every_nodes_jobs_page_by_page(cluster: Cluster) -> None:
    a, b = cluster.start_all("a", "b")
    submitted = [node.submit("echo", str(i))["id"] for i in range(3) for node in (a, b)]
    for job_id in submitted:
        a.wait(job_id)
    for node in (a, b):
        seen: list[str] = []
        before = ""
        while True:
            status, page = node.api("GET", "/jobs?limit=2" + before)
            assert status == 200, page
            seen += [j["id"] for j in page["jobs"]]
            if page["next"] is None:
                break
            before = "&before=" + page["next"]
        assert seen == submitted[::-1]  # newest first, across nodes
    assert {j["node"] for j in listing(b)} == {"a", "b"}
    assert b.api("GET", "/jobs?before=" + "f" * 40)[0] == 400


# -- claiming and pinning ---------------------------------------------------------


def test_a_queued_job_is_claimed_by_the_idle_node(cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster.start_all(*[(name, "--max-running", "1", "--allow-env", "GREETING") for name in ("a", "b")])
    gate = tmp_path / "gate"
    busy = a.submit("sh", "-c", GATED % gate)
    assert busy["node"] == "a"
    # What the request asked for travels with the job through the queue.
    queued = a.submit(
        "sh",
        "-c",
        'read line; echo "$GREETING $line"; sleep 5',
        stdin="world\n",
        env={"GREETING": "hello"},
        timeout=0.5,
    )
    assert (queued["state"], queued["node"]) == ("queued", None)
    done = a.wait(queued["id"])
    assert (done["state"], done["node"], done["stdout"]) == ("timed_out", "b", "hello world\n")
    gate.touch()
    assert a.wait(busy["id"])["state"] == "succeeded"


def test_a_job_pinned_to_a_node_runs_there_and_waits_for_it(cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster.start_all("a", ("b", "--max-running", "1"))
    status, error = a.api("POST", "/", {"command": "true", "node": "nosuch"})
    assert status == 400 and "nosuch" in error["error"]
    pinned = a.submit("echo", "on b", node="b")
    done = a.wait(pinned["id"])
    assert (done["node"], done["stdout"]) == ("b", "on b\n")

    gate = tmp_path / "gate"
    busy = b.submit("sh", "-c", GATED % gate)
    waiting = a.submit("echo", "waited", node="b")
    assert waiting["state"] == "queued"
    # a is idle and claims every second: give it two chances to take the
    # job it must leave to b.
    time.sleep(2.5)
    assert job_of(a, waiting["id"])["state"] == "queued"
    gate.touch()
    done = b.wait(waiting["id"])
    assert (done["node"], done["stdout"]) == ("b", "waited\n")
    assert b.wait(busy["id"])["state"] == "succeeded"


def test_a_queued_job_is_claimed_only_by_a_node_whose_policy_allows_it(cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster.start_all(("a", "--max-running", "1", "--whitelist", "sh,echo"), ("b", "--whitelist", "echo"))
    gate, second_gate = tmp_path / "gate", tmp_path / "second-gate"
    busy = a.submit("sh", "-c", GATED % gate)
    waiting = a.submit("sh", "-c", GATED % second_gate)
    echoed = a.submit("echo", "any node")
    # b may run echo, so it takes the younger job; the older stays for a.
    assert b.wait(echoed["id"])["node"] == "b"
    assert job_of(b, waiting["id"])["state"] == "queued"
    gate.touch()
    poll(lambda: job_of(b, waiting["id"])["state"] == "running", 1 + SLACK, "a took its job")
    second_gate.touch()
    done = b.wait(waiting["id"])
    assert (done["state"], done["node"]) == ("succeeded", "a")
    assert b.wait(busy["id"])["node"] == "a"


# -- exactly once --------------------------------------------------------------------


def test_hundreds_of_jobs_on_three_nodes_end_once_and_call_back_once(cluster: Cluster, receiver: Receiver) -> None:
    nodes = cluster.start_all(*[(name, "--max-running", "2") for name in ("a", "b", "c")])
    count = 300

    def submit(i: int) -> tuple[str, str, bool]:
        job = nodes[i % 3].submit("echo", "job %d" % i, callback=receiver.url)
        # Every third job is canceled through another node at once: queued
        # (in the database), claimed meanwhile, running, or already over.
        deleted = i % 3 == 0
        if deleted:
            status, answer = nodes[(i + 1) % 3].api("DELETE", "/" + job["id"])
            assert status in (200, 202), answer
        return job["id"], "job %d\n" % i, deleted

    with ThreadPoolExecutor(12) as pool:
        submitted = {job_id: (stdout, deleted) for job_id, stdout, deleted in pool.map(submit, range(count))}
    assert len(submitted) == count

    poll(lambda: len(receiver.counts()) >= count, 60, "a callback for every job")

    def all_delivered() -> list[dict[str, Any]] | None:
        jobs = listing(nodes[0])
        done = [j for j in jobs if j.get("callback_delivery", {}).get("state") == "delivered"]
        return jobs if len(done) == count else None

    jobs = poll(all_delivered, 30, "every delivery recorded as delivered")
    assert {j["id"] for j in jobs} == set(submitted)  # nothing lost, nothing extra
    assert all(j["callback_delivery"]["attempts"] == 1 for j in jobs)
    # Every callback arrived once, and says what GET says.
    counts = receiver.counts()
    assert set(counts) == set(submitted)
    assert [job_id for job_id, n in counts.items() if n != 1] == []
    for job in jobs:
        stdout, deleted = submitted[job["id"]]
        (body,) = receiver.bodies(job["id"])
        assert body["state"] == job["state"] and body["code"] == job["code"]
        if job["state"] == "canceled":
            assert deleted and job["err"]["code"] == "CANCELED"
        else:
            assert (job["state"], body["stdout"]) == ("succeeded", stdout)
    states = Counter(j["state"] for j in jobs)
    assert states["canceled"] > 0 and states["succeeded"] >= 2 * count // 3
    # Jobs ran where the cluster put them: on every node.
    assert {j["node"] for j in jobs if j["state"] == "succeeded"} == {"a", "b", "c"}
    status, stats = nodes[1].api("GET", "/stats")
    assert stats["states"]["succeeded"] + stats["states"]["canceled"] == count
    assert stats["running"] == 0 and stats["queued"] == 0


# -- dead and paused nodes -------------------------------------------------------------


def test_a_killed_nodes_jobs_are_lost_and_called_back_and_its_restart_ends_them(
    cluster: Cluster, receiver: Receiver
) -> None:
    a, b = cluster.start_all("a", {"name": "b", "elsewhere": True})
    doomed = [a.submit(*FOREVER, callback=receiver.url) for _ in range(2)]
    assert all(job["node"] == "a" and group_alive(job["pid"]) for job in doomed)

    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(TIMEOUT)
    killed = time.monotonic()

    def lost() -> list[dict[str, Any]] | None:
        jobs = [job_of(b, job["id"]) for job in doomed]
        return jobs if all(job["state"] == "lost" for job in jobs) else None

    for job in poll(lost, 3 * HEARTBEAT + 1 + SLACK, "the dead node's jobs declared lost"):
        assert (job["code"], job["err"]["code"], job["node"]) == (-1, "LOST", "a")
    print("declared lost %.2fs after SIGKILL" % (time.monotonic() - killed))
    assert health(b)["store"]["lost_declared"] == 2
    assert metric(b, "httprunner_cluster_lost_declared_total") == 2
    # The survivor sends their callbacks: one each.
    poll(lambda: len(receiver.counts()) == 2, SLACK, "the lost jobs' callbacks")
    assert all(receiver.bodies(job["id"])[0]["state"] == "lost" for job in doomed)
    # b runs on another machine: the processes are a's to end.
    assert all(group_alive(job["pid"]) for job in doomed)

    # Restarted under the same name at once, a ends its orphans.
    again = cluster.start("a")
    poll(lambda: not any(group_alive(job["pid"]) for job in doomed), 0.5 + SLACK, "the orphaned processes are gone")
    assert again.wait(again.submit("echo", "back")["id"])["node"] == "a"
    assert poll(lambda: (v := node_view(b, "a")) and v["alive"], SLACK, "a shown alive")
    assert all(job_of(again, job["id"])["state"] == "lost" for job in doomed)
    assert receiver.counts() == Counter({job["id"]: 1 for job in doomed})


def test_a_node_restarted_after_a_crash_declares_its_jobs_lost_at_once(cluster: Cluster, receiver: Receiver) -> None:
    a = cluster.start("a", heartbeat=60)  # nobody would sweep it in this test
    doomed = a.submit(*FOREVER, callback=receiver.url)
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(TIMEOUT)
    again = cluster.start("a", heartbeat=60)
    job = job_of(again, doomed["id"])
    assert (job["state"], job["err"]["code"]) == ("lost", "LOST")
    poll(lambda: not group_alive(doomed["pid"]), 0.5 + SLACK, "the previous incarnation's processes are gone")
    poll(lambda: receiver.counts() == Counter({doomed["id"]: 1}), SLACK, "the lost job's callback")


def test_a_node_killed_right_after_a_spawn_ends_that_orphan_when_it_restarts(
    cluster: Cluster, receiver: Receiver
) -> None:
    a, b = cluster.start_all("a", {"name": "b", "elsewhere": True})
    # Killed at once: a has most likely not recorded the job's pid yet.
    doomed = a.submit(*FOREVER, callback=receiver.url)
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(TIMEOUT)
    poll(lambda: job_of(b, doomed["id"])["state"] == "lost", 3 * HEARTBEAT + 1 + SLACK, "declared lost by b")
    assert group_alive(doomed["pid"])  # b is on another machine
    cluster.start("a")
    poll(lambda: not group_alive(doomed["pid"]), 0.5 + SLACK, "the orphan ended by a's restart")
    poll(lambda: receiver.counts() == Counter({doomed["id"]: 1}), SLACK, "the lost job's callback")


def test_a_paused_node_loses_its_job_kills_its_process_and_rejoins(cluster: Cluster, receiver: Receiver) -> None:
    a, b = cluster.start_all("a", {"name": "b", "elsewhere": True})
    job = a.submit(*FOREVER, callback=receiver.url)
    a.proc.send_signal(signal.SIGSTOP)
    try:
        lost = poll(
            lambda: (j := job_of(b, job["id"]))["state"] == "lost" and j,
            3 * HEARTBEAT + 1 + SLACK,
            "the paused node's job declared lost",
        )
        assert lost["err"]["code"] == "LOST"
        poll(lambda: receiver.counts() == Counter({job["id"]: 1}), SLACK, "the lost job's callback, from b")
        assert group_alive(job["pid"])  # a is paused; b is on another machine
        assert not node_view(b, "a")["alive"]  # type: ignore[index]
    finally:
        a.proc.send_signal(signal.SIGCONT)
    # a finds out at its next heartbeat and ends the process itself...
    poll(lambda: not group_alive(job["pid"]), HEARTBEAT + 0.5 + SLACK, "the paused node ended its lost job")
    # ...whose late end is refused: the job stays lost, its callback single.
    poll(lambda: "its result is dropped" in a.log_text(), SLACK, "the late result refused")
    for node in (a, b):
        seen = job_of(node, job["id"])
        assert (seen["state"], seen["err"]["code"], seen["code"]) == ("lost", "LOST", -1)
    # a rejoined: alive to the others, heartbeating, running new jobs.
    first = poll(lambda: (v := node_view(b, "a")) and v["alive"] and v, SLACK, "a alive again")
    poll(lambda: node_view(b, "a")["last_heartbeat"] > first["last_heartbeat"], SLACK, "a heartbeats")  # type: ignore[index]
    done = b.wait(b.submit("echo", "rejoined", node="a")["id"])
    assert (done["node"], done["stdout"]) == ("a", "rejoined\n")
    time.sleep(0.5)  # a duplicate would come from a's own outbox, now
    assert receiver.counts() == Counter({job["id"]: 1})


def test_a_lone_node_back_from_a_long_pause_keeps_its_jobs(cluster: Cluster, tmp_path: Path) -> None:
    a = cluster.start("a")
    gate = tmp_path / "gate"
    job = a.submit("sh", "-c", GATED % gate)
    before = node_view(a, "a")
    a.proc.send_signal(signal.SIGSTOP)
    try:
        # Longer than 3 heartbeats: a would be dead to any other node.
        time.sleep(3 * HEARTBEAT + 1)
    finally:
        a.proc.send_signal(signal.SIGCONT)
    # Back, a heartbeats and polls (its sweep included) before this answers.
    poll(lambda: node_view(a, "a")["last_heartbeat"] > before["last_heartbeat"], SLACK, "a heartbeats again")  # type: ignore[index]
    time.sleep(1.5)  # more than a poll interval: a swept, if it sweeps itself
    assert job_of(a, job["id"])["state"] == "running"
    gate.touch()
    assert a.wait(job["id"])["state"] == "succeeded"
    assert "declared dead" not in a.log_text()


# -- refusals --------------------------------------------------------------------


def test_a_second_live_node_of_the_same_name_and_a_newer_schema_refuse_to_start(cluster: Cluster) -> None:
    cluster.start("a")
    line = cluster.refusal("a")
    assert "node 'a' is already running" in line and "--node" in line
    cluster.sql("UPDATE {s}.meta SET value = '99' WHERE key = 'schema_version'")
    line = cluster.refusal("c")
    assert "version 99" in line and "upgrade httprunner" in line


# -- the database away -------------------------------------------------------------


def proxied(proxy: Proxy) -> str:
    """``HTTPRUNNER_TEST_POSTGRES`` through ``proxy``."""
    parts = urllib.parse.urlsplit(PG)
    user = parts.netloc.rpartition("@")[0]
    netloc = "%s127.0.0.1:%d" % (user + "@" if user else "", proxy.port)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    parts = urllib.parse.urlsplit(PG)
    p = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield p
    p.close()


def test_a_node_cut_off_from_the_database_keeps_its_jobs_and_catches_up(
    proxy: Proxy, cluster: Cluster, receiver: Receiver, tmp_path: Path
) -> None:
    # a's heartbeat is 3 s: the others declare it dead after 9 s, and the
    # cut is over well before that.
    a, b = cluster.start_all({"name": "a", "heartbeat": 3, "uri": proxied(proxy)}, "b")
    elsewhere = b.wait(b.submit("echo", "on b")["id"])
    gate = tmp_path / "gate"
    job = a.submit("sh", "-c", GATED % gate, callback=receiver.url)

    proxy.cut()
    cut = time.monotonic()
    # New submissions: 503 at once, never 500; nothing was accepted.
    for _ in range(2):
        status, headers, body = a.request("POST", "/", b'{"command": "true"}')
        assert status == 503 and headers["Retry-After"], body
        assert "could not be recorded" in json.loads(body)["error"]
    print("a 503 after %.2fs" % (time.monotonic() - cut))
    # /healthz and /metrics say so.
    document = health(a)
    assert (document["status"], document["store"]["ok"], document["store"]["node"]) == ("degraded", False, "a")
    assert document["store"]["last_error"]
    assert metric(a, "httprunner_store_up") == 0
    # What a does not hold is in the database: 503 too.
    for path in ("/" + elsewhere["id"], "/jobs", "/stats"):
        status, headers, body = a.request("GET", path)
        assert status == 503 and headers["Retry-After"], (path, body)
    # The running job runs on and ends; a answers for it from memory.
    assert job_of(a, job["id"])["state"] == "running"
    gate.touch()
    done = poll(lambda: (j := job_of(a, job["id"]))["state"] != "running" and j, SLACK, "the job ends on a")
    assert (done["state"], done["stdout"]) == ("succeeded", "first\nsecond\n")
    # b still has the job as running: a's result is not in the database yet.
    assert job_of(b, job["id"])["state"] == "running"
    # The outage lasts longer than one of a's heartbeats (3 s), shorter
    # than the three after which the others declare it dead.
    time.sleep(max(0.0, cut + 4.0 - time.monotonic()))
    assert (node_view(b, "a") or {}).get("alive")
    proxy.restore()

    # The result reaches the database; a takes submissions again by itself.
    recorded = poll(lambda: (j := job_of(b, job["id"]))["state"] != "running" and j, 1 + SLACK, "the result recorded")
    assert (recorded["state"], recorded["stdout"], recorded["node"]) == ("succeeded", "first\nsecond\n", "a")
    # Its connections are back: every request answers at the first try.
    assert job_of(a, elsewhere["id"])["stdout"] == "on b\n"
    assert len(listing(a)) == 2 and a.api("GET", "/stats")[0] == 200
    after = a.submit("echo", "back")
    assert a.wait(after["id"])["stdout"] == "back\n"
    # Its listener is back too: a job pinned to it, queued through b, runs.
    pinned = b.submit("echo", "pinned", node="a")
    assert b.wait(pinned["id"])["node"] == "a"
    document = health(a)
    assert (document["status"], document["store"]["ok"], document["store"]["last_error"]) == ("ok", True, None)
    assert metric(a, "httprunner_store_up") == 1 and metric(a, "httprunner_cluster_claims_total") >= 1
    # Never declared dead; its job called back once.
    assert node_view(b, "a")["alive"]  # type: ignore[index]
    poll(lambda: receiver.counts() == Counter({job["id"]: 1}), SLACK, "the callback, once")
    assert receiver.bodies(job["id"])[0]["state"] == "succeeded"
    assert "Traceback" not in a.log_text()


def test_a_node_cut_off_for_longer_than_three_heartbeats_loses_its_job_and_rejoins(
    proxy: Proxy, cluster: Cluster, receiver: Receiver, tmp_path: Path
) -> None:
    a, b = cluster.start_all({"name": "a", "uri": proxied(proxy)}, {"name": "b", "elsewhere": True})
    gate = tmp_path / "gate"
    job = a.submit("sh", "-c", GATED % gate, callback=receiver.url)
    proxy.cut()
    try:
        poll(lambda: job_of(b, job["id"])["state"] == "lost", 3 * HEARTBEAT + 1 + SLACK, "declared lost")
        # Meanwhile the job ends on a, which keeps its result for later.
        gate.touch()
        poll(lambda: job_of(a, job["id"])["state"] == "succeeded", SLACK, "the job ends on a")
    finally:
        proxy.restore()
    # Back, a learns the job is no longer its own: its result is refused.
    poll(lambda: "its result is dropped" in a.log_text(), 5 + SLACK, "the late result refused")
    for node in (a, b):
        assert job_of(node, job["id"])["state"] == "lost"
    poll(lambda: (v := node_view(b, "a")) and v["alive"], 5 + SLACK, "a alive again")
    assert b.wait(b.submit("echo", "x", node="a")["id"])["node"] == "a"
    poll(lambda: receiver.counts() == Counter({job["id"]: 1}), SLACK, "one callback")
    assert receiver.bodies(job["id"])[0]["state"] == "lost"


# -- retention -----------------------------------------------------------------------


def test_retention_is_cluster_wide(cluster: Cluster) -> None:
    limit = 5
    a, b = cluster.start_all(("a", "--max-jobs", str(limit)), ("b", "--max-jobs", str(limit)))
    finished = []
    for i in range(8):
        for node in (a, b):
            finished.append(node.wait(node.submit("echo", str(i))["id"])["id"])
    kept = poll(
        lambda: (jobs := listing(a)) and len(jobs) == limit and jobs, 2 + SLACK, "the history pruned to --max-jobs"
    )
    assert [j["id"] for j in kept] == finished[::-1][:limit]
    assert [j["id"] for j in listing(b)] == [j["id"] for j in kept]
    assert b.api("GET", "/" + finished[0])[0] == 404


# -- live output across nodes ---------------------------------------------------------


def follow(node: Daemon, job_id: str, offset: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    conn.request("GET", "/%s/stdout?follow=1&offset=%d" % (job_id, offset))
    response = conn.getresponse()
    assert response.status == 200
    return conn, response


def test_a_follower_on_another_node_sees_the_output_gap_as_the_owners_follower(
    cluster: Cluster, tmp_path: Path
) -> None:
    # 1 KiB kept per stream: 512 bytes of head, 512 of tail, a gap between.
    a, b = cluster.start_all(("a", "--max-output", "1K"), ("b", "--max-output", "1K"))
    gate = tmp_path / "gate"
    script = (
        "i=0; while [ $i -lt 300 ]; do printf 'line %%05d\\n' $i; i=$((i+1)); done;"
        " while [ ! -e %s ]; do sleep 0.05; done; echo second"
    )
    job = a.submit("sh", "-c", script % gate)
    total = 300 * 11
    # Once a wrote it to the database, b knows how much there is.
    poll(lambda: job_of(b, job["id"])["stdout_bytes"] == total, SLACK, "the output synced")

    # From the start, both stop at the gap (a client resumes at its offset).
    for node in (a, b):
        conn, response = follow(node, job["id"], 0)
        assert (response.getheader("X-Output-Offset"), response.read()) == (
            "0",
            job_of(a, job["id"])["stdout"][:512].encode(),
        )
        conn.close()
    # Resumed after the head, both skip to the tail and stream to the end.
    streams = [follow(node, job["id"], 512) for node in (a, b)]
    assert [r.getheader("X-Output-Offset") for _, r in streams] == [str(total - 512)] * 2
    first = [r.read(512) for _, r in streams]
    assert first[0] == first[1] and first[0].endswith(b"line 00299\n")
    gate.touch()
    rest = [r.read() for _, r in streams]
    assert rest == [b"second\n", b"second\n"]
    for conn, _ in streams:
        conn.close()


def test_a_dead_nodes_pending_callback_is_taken_over(cluster: Cluster, receiver: Receiver, tmp_path: Path) -> None:
    a, b = cluster.start_all(("a", "--callback-attempts", "10"), ("b", "--callback-attempts", "10"))
    gate = tmp_path / "gate"
    job = a.submit("sh", "-c", GATED % gate, callback=receiver.url)
    receiver.refuse.add(job["id"])
    gate.touch()
    # a tried (the receiver answered 500) and will try again later...
    poll(lambda: (job_of(b, job["id"]).get("callback_delivery") or {}).get("attempts"), SLACK, "a's first attempt")
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(TIMEOUT)
    tried = receiver.refused[job["id"]]
    receiver.refuse.clear()
    # ...but dies: b takes the delivery over once it declares a dead.
    done = poll(
        lambda: (j := job_of(b, job["id"]))["callback_delivery"]["state"] == "delivered" and j,
        3 * HEARTBEAT + 1 + SLACK,
        "the callback delivered by b",
    )
    # (a may have died between an attempt and its record)
    assert done["state"] == "succeeded" and 2 <= done["callback_delivery"]["attempts"] <= tried + 1
    assert receiver.counts() == Counter({job["id"]: 1})
    assert receiver.bodies(job["id"])[0]["state"] == "succeeded"


def test_a_node_shutting_down_takes_no_job_from_the_queue(cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster.start_all(("a", "--kill-grace", "3"), ("b", "--max-running", "1"))
    stubborn = a.submit("sh", "-c", "trap '' TERM; echo ready; sleep 30")
    poll(lambda: job_of(a, stubborn["id"])["stdout"] == "ready\n", SLACK, "the job ignores TERM")
    gate = tmp_path / "gate"
    b.submit("sh", "-c", GATED % gate)
    a.terminate()  # a waits 3 s for its job before it KILLs it
    poll(lambda: not listening(a), SLACK, "a stops taking requests")
    assert a.proc.poll() is None  # ... and still runs
    queued = b.submit("echo", "for b")
    seen = set()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        seen.add((job := job_of(b, queued["id"]))["state"] + "/" + str(job["node"]))
        time.sleep(0.02)
    assert seen == {"queued/None"}
    gate.touch()
    assert b.wait(queued["id"])["node"] == "b"
