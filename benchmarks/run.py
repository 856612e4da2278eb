"""Run every httprunner benchmark in one command; print a table; write JSON.

    python benchmarks/run.py [--quick] [--rounds N] [--json FILE]
    python benchmarks/compare.py before.json after.json

The harness starts its own daemons with ``twistd -n --pidfile= httprunner``
on free loopback ports, plus the raw baselines measured in the same run
(a bare ``os.posix_spawn`` + pipe loop, a bare Klein route, and Debian's
``webhook`` when it is installed).  Throughput measurements run in
interleaved rounds (the order rotates every round) and the table shows
medians, because the machine's cores are shared.  Every load is bounded in
count and in time.  See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import baselines  # noqa: E402
import httpload  # noqa: E402
import peers  # noqa: E402
from httpload import Connection  # noqa: E402

CHECKOUT = os.path.dirname(HERE)
WHITELIST = "echo,true,yes,head,sh"
ECHO = json.dumps({"command": "echo", "args": "foo"}).encode()
TRUE = json.dumps({"command": "true"}).encode()
MiB = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: bytes of the "100 MB of output" jobs
BIG_OUTPUT = 100_000_000
#: jobs the Node original keeps (its -n): more than are ever in flight, so
#: no polled job is evicted, and few enough that its linear search for a
#: job id (an array filter per GET) stays a small part of its cost
NODE_MAX_JOBS = 1000


# -- sizes ------------------------------------------------------------------

FULL = {
    "rounds": 3,
    "submit_count": 600,
    "submit_seconds": 2.0,
    "e2e_jobs": 2000,
    "e2e_workers": 16,
    "e2e_seconds": 12.0,
    "spawn_jobs": 2000,
    "get_seconds": 2.0,
    "get_count": 10**9,
    "post_count": 3000,
    "post_seconds": 2.0,
    "retained": 10000,
    "warm_jobs": 1000,
    "fill_workers": 32,
    "fill_seconds": 60.0,
    "big_output_seconds": 10.0,
    "output_time_limit": 30.0,
    "flood_seconds": 3.0,
    "flood_burst_seconds": 1.0,
    "slow_writes": 20,
    "idle_timeout": 120.0,
}
QUICK = {
    "rounds": 1,
    "submit_count": 20,
    "submit_seconds": 1.0,
    "e2e_jobs": 20,
    "e2e_workers": 4,
    "e2e_seconds": 5.0,
    "spawn_jobs": 50,
    "get_seconds": 0.5,
    "get_count": 300,
    "post_count": 100,
    "post_seconds": 0.5,
    "retained": 200,
    "warm_jobs": 20,
    "fill_workers": 16,
    "fill_seconds": 10.0,
    "big_output_seconds": 1.0,
    "output_time_limit": 15.0,
    "flood_seconds": 0.5,
    "flood_burst_seconds": 0.5,
    "slow_writes": 4,
    "idle_timeout": 20.0,
}


# -- processes --------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from ``/proc/<pid>/stat`` (clock ticks)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds_precise(pid: int) -> float:
    """Time on CPU of every thread of ``pid`` in ns (``schedstat``), for
    short windows where clock ticks are too coarse; ``/proc/<pid>/stat``
    when schedstat is missing."""
    total = 0
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return cpu_seconds(pid)
    return total / 1e9


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field (``VmRSS``, ``VmHWM``) of ``/proc/<pid>/status``."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM (Linux >= 4.0) so a later read is the peak from now on."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited with %s" % (proc.args, proc.returncode))
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("nothing listens on port %d" % port)


class Daemon:
    """One ``twistd -n httprunner`` child on a free loopback port."""

    def __init__(self, name: str, extra: list[str], opts: argparse.Namespace, workdir: str) -> None:
        self.name = name
        self.log_path = os.path.join(workdir, "%s.log" % name)
        self.argv = [
            opts.twistd,
            "-n",
            "--pidfile=",
            "httprunner",
            "--port",
            "0",
            "--interface",
            "127.0.0.1",
            "--whitelist",
            WHITELIST,
            *extra,
            *opts.daemon_arg,
        ]
        if os.geteuid() == 0:
            self.argv.append("--allow-root")
        self.env = dict(os.environ)
        if opts.pythonpath:
            self.env["PYTHONPATH"] = opts.pythonpath + os.pathsep + self.env.get("PYTHONPATH", "")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 30.0) -> None:
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=tempfile.gettempdir(),
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.log_path, "rb") as f:
                match = re.search(rb"starting on (\d+)", f.read())
            if match:
                self.port = int(match.group(1))
                return
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        with open(self.log_path, "rb") as f:
            tail = f.read()[-2000:].decode("utf-8", "replace")
        raise RuntimeError("daemon %s did not start (%s):\n%s" % (self.name, " ".join(self.argv), tail))

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Helper:
    """A baseline server child (bare Klein, webhook)."""

    def __init__(self, argv: list[str], port: int = 0) -> None:
        self.argv = argv
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE if not self.port else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        if not self.port:
            assert self.proc.stdout is not None
            line = await asyncio.get_running_loop().run_in_executor(None, self.proc.stdout.readline)
            self.port = int(line)
        await wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- API helpers -------------------------------------------------------------


async def get_json(port: int, path: str) -> dict[str, Any]:
    conn = Connection("127.0.0.1", port)
    try:
        status, body = await conn.request("GET", path)
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError("GET %s -> %d %r" % (path, status, body[:200]))
    return json.loads(body)


async def submit(port: int, body: bytes) -> dict[str, Any]:
    conn = Connection("127.0.0.1", port)
    try:
        status, answer = await conn.request("POST", "/", body)
    finally:
        conn.close()
    if status != 202:
        raise RuntimeError("POST / -> %d %r" % (status, answer[:200]))
    return json.loads(answer)


async def wait_idle(port: int, timeout: float) -> None:
    """Until no job runs or waits (``/healthz``), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    conn = Connection("127.0.0.1", port)
    try:
        while time.monotonic() < deadline:
            _, body = await conn.request("GET", "/healthz")
            health = json.loads(body)
            if health["running"] == 0 and health["queued"] == 0:
                return
            await asyncio.sleep(0.02)
    finally:
        conn.close()
    raise RuntimeError("daemon on port %d still busy after %gs" % (port, timeout))


async def wait_job(port: int, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    """Poll the job's summary until ``until(summary)`` or ``timeout``.

    Polls ``GET /jobs`` (summaries without output), not ``GET /<id>``:
    serialising megabytes of retained output 50 times a second would cost
    the daemon more memory and CPU than the job being measured.
    """
    deadline = time.monotonic() + timeout
    while True:
        listing = await get_json(port, "/jobs?limit=1000")
        found = [j for j in listing["jobs"] if j["id"] == job_id]
        if not found:
            raise RuntimeError("job %s is not listed" % job_id)
        if until(found[0]) or time.monotonic() > deadline:
            return found[0]
        await asyncio.sleep(0.02)


async def cancel(port: int, job_id: str) -> None:
    conn = Connection("127.0.0.1", port)
    try:
        await conn.request("DELETE", "/" + job_id)
    finally:
        conn.close()
    await wait_job(port, job_id, lambda j: j["code"] is not None, 30)


# -- the benchmark ------------------------------------------------------------

#: the daemons of one store variant share these limits
STACK_LIMITS = ["--max-running", "64", "--max-queued", "20000", "--max-connections-per-peer", "1024"]


class Stack:
    """The retain-many and retain-one daemons of one store variant.

    The default stack runs with the daemon's default store (``suffix``
    ``""``); each ``--store``/``--variant`` adds a stack whose metric keys
    end in ``@<name>`` and whose daemons get the variant's options.
    """

    def __init__(
        self, name: str, extra: list[str], opts: argparse.Namespace, size: dict[str, Any], workdir: str
    ) -> None:
        self.name = name
        self.suffix = "@" + name if name else ""
        tag = "-" + name if name else ""

        def args(daemon: str) -> list[str]:
            return [a.replace("{daemon}", daemon + tag).replace("{workdir}", workdir) for a in extra]

        self.big = Daemon(
            "retain-many" + tag,
            ["--max-jobs", str(size["retained"]), *STACK_LIMITS, *args("retain-many")],
            opts,
            workdir,
        )
        self.small = Daemon("retain-one" + tag, ["--max-jobs", "1", *STACK_LIMITS, *args("retain-one")], opts, workdir)
        #: jobs accepted by the retain-many daemon so far (all finish)
        self.big_jobs = 0
        self.small_id = ""

    @property
    def daemons(self) -> tuple[Daemon, Daemon]:
        return self.big, self.small


class Bench:
    def __init__(self, opts: argparse.Namespace, size: dict[str, Any], workdir: str) -> None:
        self.opts = opts
        self.size = size
        self.workdir = workdir
        self.samples: dict[str, list[float]] = {}
        self.checks: dict[str, Any] = {"rejected_submissions": 0, "http_errors": 0}
        #: why something was skipped, printed with the results
        self.notes: list[str] = list(opts.notes)
        self.use_wrk = httpload.have_wrk() and not opts.quick and not opts.no_wrk
        self.stacks = [Stack("", [], opts, size, workdir)]
        for name, extra in opts.variants:
            self.stacks.append(Stack(name, extra, opts, size, workdir))
        self.main = self.stacks[0]
        self.flood = Daemon("flood", ["--max-jobs", "100", "--max-output", "%d" % opts.max_output], opts, workdir)
        self.klein = Helper([sys.executable, os.path.join(HERE, "baselines.py"), "klein"])
        self.webhook: Helper | None = None
        self.node: Helper | None = None
        self.receiver = httpload.CallbackReceiver()
        #: a job writing 100 MB as fast as it can (printable bytes, so the
        #: original's JSON of it stays 100 MB), run by both programs
        self.writer_script = os.path.join(workdir, "write-100mb")
        with open(self.writer_script, "w") as f:
            f.write("#!/bin/sh\nyes | head -c %d\n" % BIG_OUTPUT)
        os.chmod(self.writer_script, 0o755)

    def record(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def _errors(self, key: str, count: int) -> None:
        if count:
            self.checks["http_errors"] += count
            errors = self.checks.setdefault("http_errors_by_metric", {})
            errors[key] = errors.get(key, 0) + count

    @property
    def daemons(self) -> list[Daemon]:
        return [d for stack in self.stacks for d in stack.daemons] + [self.flood]

    # -- setup -------------------------------------------------------------

    async def start(self) -> None:
        starts = [d.start() for d in self.daemons] + [self.klein.start(), self.receiver.start()]
        webhook = shutil.which("webhook")
        if webhook and not self.opts.no_webhook:
            hooks = os.path.join(self.workdir, "hooks.json")
            with open(hooks, "w") as f:
                json.dump(
                    [
                        {
                            "id": "echo",
                            "execute-command": shutil.which("echo") or "/bin/echo",
                            "pass-arguments-to-command": [{"source": "string", "name": "foo"}],
                            "include-command-output-in-response": True,
                        }
                    ],
                    f,
                )
            port = free_port()
            self.webhook = Helper([webhook, "-hooks", hooks, "-ip", "127.0.0.1", "-port", str(port)], port)
            starts.append(self.webhook.start())
        elif not self.opts.no_webhook:
            self.notes.append("webhook is not installed (apt-get install -y webhook): no webhook row")
        if not self.opts.no_node:
            argv, why = peers.install_node_peer(self.opts.node_peer, self.opts.progress)
            if argv is None:
                self.notes.append("Node original skipped: " + why)
            else:
                port = free_port()
                self.node = Helper(
                    [
                        *argv,
                        "-p",
                        str(port),
                        "-i",
                        "127.0.0.1",
                        "-n",
                        str(NODE_MAX_JOBS),
                        "-w",
                        "echo," + self.writer_script,
                    ],
                    port,
                )
                starts.append(self.node.start())
        await asyncio.gather(*starts)
        for stack in self.stacks:
            job = await submit(stack.small.port, ECHO)
            await wait_job(stack.small.port, job["id"], lambda j: j["code"] is not None, 10)
            stack.small_id = job["id"]

    def stop(self) -> None:
        # SIGTERM all first, so the daemons shut down in parallel
        for child in self.daemons:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        for child in self.daemons:
            child.stop()
        for helper in (self.klein, self.webhook, self.node):
            if helper is not None:
                helper.stop()

    # -- metric 4a: RSS per retained finished job ---------------------------

    async def fill(self, stack: Stack) -> None:
        """Warm up, then run ``retained`` short jobs and measure the RSS
        each retained finished job costs; leaves the daemon holding
        ``retained`` jobs for the GET measurements."""
        size = self.size
        port, pid = stack.big.port, stack.big.pid
        warm = len(await self._longpoll_jobs(stack, size["warm_jobs"], size["fill_workers"], ECHO))
        await wait_idle(port, size["idle_timeout"])
        await asyncio.sleep(0.2)
        rss0 = status_kib(pid, "VmRSS")
        ids = await self._longpoll_jobs(stack, size["retained"], size["fill_workers"], ECHO)
        await wait_idle(port, size["idle_timeout"])
        await asyncio.sleep(0.2)
        rss1 = status_kib(pid, "VmRSS")
        # bounded in time: a slow daemon may end up retaining fewer than asked
        retained = min(size["retained"], warm + len(ids))
        self.checks["retained_jobs" + stack.suffix] = retained
        self.record(
            "rss_per_retained_job_bytes" + stack.suffix, max(1.0, (rss1 - rss0) * 1024 / max(1, retained - warm))
        )
        self.checks["rss_retaining_many_mib" + stack.suffix] = round(rss1 / 1024, 1)

    async def _longpoll_jobs(self, stack: Stack, total: int, workers: int, body: bytes) -> list[str]:
        ids: list[str] = [""] * total

        async def one(conn: Connection, n: int) -> None:
            status, answer = await conn.request("POST", "/", body)
            if status != 202:
                self.checks["rejected_submissions"] += 1
                return
            job = json.loads(answer)
            ids[n] = job["id"]
            stack.big_jobs += 1
            while job["code"] is None:
                _, answer = await conn.request("GET", "/%s?wait=30" % job["id"])
                job = json.loads(answer)

        await httpload.run_workers(workers, total, one, "127.0.0.1", stack.big.port, self.size["fill_seconds"])
        return [i for i in ids if i]

    # -- baselines -----------------------------------------------------------

    async def spawn_baseline(self, in_flight: int) -> None:
        result = baselines.spawn_loop(self.size["spawn_jobs"], in_flight, duration=30)
        self.record("baseline_spawn_c%d_jobs_per_s" % in_flight, result["jobs_per_s"])

    async def get_rps(self, key: str, port: int, path: str, connections: int) -> None:
        size = self.size
        if self.use_wrk:
            result = httpload.wrk("http://127.0.0.1:%d%s" % (port, path), connections, size["get_seconds"])
            self._errors(key, result["non2xx"] + result["socket_errors"])
        else:
            result = await httpload.closed_loop(
                "127.0.0.1",
                port,
                connections,
                lambda n: ("GET", path, None),
                count=size["get_count"],
                duration=size["get_seconds"],
            )
            self._errors(key, sum(v for k, v in result["statuses"].items() if k != 200))
        self.record(key, result["rps"])

    async def get_one(self, stack: Stack, connections: int) -> None:
        key = "get_1_retained_c%d_rps%s" % (connections, stack.suffix)
        await self.get_rps(key, stack.small.port, "/" + stack.small_id, connections)

    async def get_many(self, stack: Stack, connections: int) -> None:
        """GET /<id> on the daemon retaining many jobs: the newest finished
        job (older ones are evicted as later steps add jobs)."""
        port = stack.big.port
        listing = await get_json(port, "/jobs?limit=1&state=succeeded")
        job_id = listing["jobs"][0]["id"]
        retained = min(self.size["retained"], stack.big_jobs)
        key = "get_many_retained_jobs_min" + stack.suffix
        self.checks[key] = min(retained, self.checks.get(key, retained))
        await self.get_rps("get_many_retained_c%d_rps%s" % (connections, stack.suffix), port, "/" + job_id, connections)

    async def klein_post(self, connections: int) -> None:
        size = self.size
        result = await httpload.closed_loop(
            "127.0.0.1",
            self.klein.port,
            connections,
            lambda n: ("POST", "/", ECHO),
            count=size["post_count"],
            duration=size["post_seconds"],
        )
        self.record("baseline_klein_post_c%d_rps" % connections, result["rps"])
        self.record("baseline_klein_post_c%d_p99_ms" % connections, result["p99_ms"])

    async def webhook_sync(self) -> None:
        assert self.webhook is not None

        async def one(conn: Connection, n: int) -> None:
            status, answer = await conn.request("POST", "/hooks/echo", b"{}")
            if status != 200 or answer.strip() != b"foo":
                self.checks["http_errors"] += 1

        size = self.size
        elapsed, done = await httpload.run_workers(
            size["e2e_workers"], size["e2e_jobs"], one, "127.0.0.1", self.webhook.port, size["e2e_seconds"]
        )
        self.record("webhook_sync_jobs_per_s", done / elapsed)

    # -- metric 1: submit -------------------------------------------------------

    async def submit_load(self, stack: Stack, name: str, body: bytes, connections: int) -> None:
        size = self.size
        port = stack.big.port
        pid = stack.big.pid
        cpu0 = cpu_seconds(pid)

        def seen(status: int, answer: bytes) -> None:
            if status != 202:
                self.checks["rejected_submissions"] += 1

        result = await httpload.closed_loop(
            "127.0.0.1",
            port,
            connections,
            lambda n: ("POST", "/", body),
            count=size["submit_count"],
            duration=size["submit_seconds"],
            on_response=seen,
        )
        await wait_idle(port, size["idle_timeout"])
        accepted = result["statuses"].get(202, 0)
        stack.big_jobs += accepted
        key = "submit_%s_c%d" % (name, connections)
        self.record(key + "_rps" + stack.suffix, result["rps"])
        self.record(key + "_p50_ms" + stack.suffix, result["p50_ms"])
        self.record(key + "_p99_ms" + stack.suffix, result["p99_ms"])
        if name == "echo" and connections == 16 and accepted:
            # metric 6: everything the daemon spent to admit, run and retire a job
            self.record("server_cpu_ms_per_job" + stack.suffix, max(1e-3, (cpu_seconds(pid) - cpu0) * 1000 / accepted))

    # -- metric 2: end to end ------------------------------------------------------

    async def e2e(self, stack: Stack, mode: str) -> None:
        await self._e2e(
            mode, stack.big.port, stack.big.pid, "e2e_%s_jobs_per_s" % mode + stack.suffix, stack.suffix, stack
        )

    async def e2e_node(self, mode: str) -> None:
        """The same load on the Node original (no long poll there)."""
        assert self.node is not None and self.node.proc is not None
        await self._e2e(mode, self.node.port, self.node.proc.pid, "node_e2e_%s_jobs_per_s" % mode, "", None)

    async def _e2e(self, mode: str, port: int, pid: int, key: str, suffix: str, stack: Stack | None) -> None:
        size = self.size
        body = ECHO
        if mode == "callback":
            body = json.dumps({"command": "echo", "args": "foo", "callback": self.receiver.url}).encode()
        wrong = 0

        async def one(conn: Connection, n: int) -> None:
            nonlocal wrong
            status, answer = await conn.request("POST", "/", body)
            if status != 202:
                self.checks["rejected_submissions"] += 1
                return
            job = json.loads(answer)
            if stack is not None:
                stack.big_jobs += 1
            if mode == "callback":
                job = await asyncio.wait_for(self.receiver.expect(job["id"]), 60)
            while job["code"] is None:
                if mode == "poll":
                    await asyncio.sleep(self.opts.poll_interval)
                    _, answer = await conn.request("GET", "/" + job["id"])
                else:
                    _, answer = await conn.request("GET", "/%s?wait=30" % job["id"])
                job = json.loads(answer)
            if job["stdout"] != "foo\n" or job["code"] != 0:
                wrong += 1

        cpu0 = cpu_seconds(pid)
        elapsed, done = await httpload.run_workers(
            size["e2e_workers"], size["e2e_jobs"], one, "127.0.0.1", port, size["e2e_seconds"]
        )
        self.record(key, done / elapsed)
        done_key = key.replace("_jobs_per_s", "_jobs_done_min")
        self.checks[done_key] = min(done, self.checks.get(done_key, done))
        if mode == "poll":
            # metric 6 as the issue states it: daemon CPU per polled job
            prefix = "node_" if stack is None else "server_"
            self.record(
                prefix + "cpu_ms_per_job_polled" + suffix, max(1e-3, (cpu_seconds(pid) - cpu0) * 1000 / max(1, done))
            )
        self.checks["wrong_results"] = self.checks.get("wrong_results", 0) + wrong

    # -- metric 5: flooding after the cap; a slow writer --------------------------------

    async def flood_cpu(self) -> None:
        port, pid = self.flood.port, self.flood.pid
        job = await submit(port, json.dumps({"command": "yes"}).encode())
        await wait_job(port, job["id"], lambda j: j["stdout_dropped"] > 0, 30)
        # The first second past the cap holds the drain's burst (it reads as
        # fast as the job writes for a bounded CPU budget): measured apart,
        # then the steady state of a job that floods without end.
        burst0 = cpu_seconds_precise(pid)
        await asyncio.sleep(self.size["flood_burst_seconds"])
        t0, cpu0 = time.monotonic(), cpu_seconds_precise(pid)
        await asyncio.sleep(self.size["flood_seconds"])
        t1, cpu1 = time.monotonic(), cpu_seconds_precise(pid)
        seen = await wait_job(port, job["id"], lambda j: True, 0)
        await cancel(port, job["id"])
        self.record("flood_after_cap_daemon_cpu_percent", max(1e-3, (cpu1 - cpu0) / (t1 - t0) * 100))
        self.record("flood_first_second_daemon_cpu_ms", max(1e-3, (cpu0 - burst0) * 1000))
        self.checks["flood_bytes_read"] = seen["stdout_bytes"]

    async def slow_writer(self) -> None:
        """A job that passes its cap, then writes 2 KiB every 50 ms: its
        duration under the daemon over the same script run bare."""
        cap = self.opts.max_output
        writes = self.size["slow_writes"]
        script = (
            "head -c %d /dev/zero; i=0; while [ $i -lt %d ]; do head -c 2048 /dev/zero; sleep 0.05; i=$((i+1)); done"
            % (cap + 32 * 1024, writes)
        )
        port = self.flood.port
        job = await submit(port, json.dumps({"command": "sh", "args": ["-c", script]}).encode())
        job = await wait_job(port, job["id"], lambda j: j["code"] is not None, 60)
        t0 = time.perf_counter()
        subprocess.run(["sh", "-c", script], stdout=subprocess.PIPE, check=True)
        bare = time.perf_counter() - t0
        self.record("slow_writer_after_cap_slowdown", job["duration"] / bare)
        if job["stdout_dropped"] <= 0:
            self.checks["slow_writer_not_over_cap"] = 1

    # -- metric 4b: 100 MB of output: peak RSS, and how long it takes ------------------

    async def big_output(self) -> None:
        port, pid = self.flood.port, self.flood.pid
        await wait_idle(port, 30)
        await asyncio.sleep(0.2)
        idle = status_kib(pid, "VmRSS")
        can_reset = reset_peak_rss(pid)
        peak = idle
        job = await submit(port, json.dumps({"command": "head", "args": "-c %d /dev/zero" % BIG_OUTPUT}).encode())
        deadline = time.monotonic() + self.size["big_output_seconds"]
        seen = job
        while time.monotonic() < deadline:
            peak = max(peak, status_kib(pid, "VmRSS"))
            seen = await wait_job(port, job["id"], lambda j: True, 0)
            if seen["code"] is not None:
                break
            await asyncio.sleep(0.02)
        if can_reset:
            peak = max(peak, status_kib(pid, "VmHWM"))
        if seen["code"] is None:
            await cancel(port, job["id"])
        self.record("output_100mb_peak_rss_over_idle_mib", max(1e-3, (peak - idle) / 1024))
        self.checks["output_100mb_bytes_read"] = seen["stdout_bytes"]
        self.checks["output_100mb_finished"] = seen["code"] is not None
        self.checks["output_100mb_window_s"] = self.size["big_output_seconds"]

    async def output_time(self, peer: str) -> None:
        """Submit the 100 MB writer with a callback; seconds until the
        finished job arrives.  The same observation on both programs: the
        original's GET would carry the whole 100 MB on every poll."""
        if peer == "node":
            assert self.node is not None and self.node.proc is not None
            port = self.node.port
            body = {"command": self.writer_script, "args": "", "callback": self.receiver.url}
            key = "node_output_100mb_seconds"
        else:
            port = self.flood.port
            body = {"command": "sh", "args": [self.writer_script], "callback": self.receiver.url}
            key = "output_100mb_seconds"
        t0 = time.perf_counter()
        job = await submit(port, json.dumps(body).encode())
        timeout = self.size["output_time_limit"]
        try:
            done = await asyncio.wait_for(self.receiver.expect(job["id"]), timeout)
        except TimeoutError:
            self.receiver.forget(job["id"])
            self.checks[key + "_timeouts"] = self.checks.get(key + "_timeouts", 0) + 1
            if peer != "node":
                await cancel(port, job["id"])
            return
        self.record(key, done["_received_at"] - t0)
        written = done.get("stdout_bytes", len(done.get("stdout", "")))
        if written != BIG_OUTPUT:
            self.checks[key + "_wrong_bytes"] = written

    # -- driving ---------------------------------------------------------------------

    def round_steps(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("spawn c1", lambda: self.spawn_baseline(1)),
            ("spawn c16", lambda: self.spawn_baseline(16)),
        ]
        for c in (16, 64):
            steps.append(
                (
                    "klein GET c%d" % c,
                    lambda c=c: self.get_rps("baseline_klein_get_c%d_rps" % c, self.klein.port, "/" + "0" * 40, c),
                )
            )
            for s in self.stacks:
                steps.append(("GET 1 retained c%d%s" % (c, s.suffix), lambda c=c, s=s: self.get_one(s, c)))
                steps.append(
                    (
                        "GET %d retained c%d%s" % (self.size["retained"], c, s.suffix),
                        lambda c=c, s=s: self.get_many(s, c),
                    )
                )
        for c in (1, 16, 64):
            steps.append(("klein POST c%d" % c, lambda c=c: self.klein_post(c)))
            for s in self.stacks:
                if s is self.main or c != 1:
                    steps.append(
                        ("submit echo c%d%s" % (c, s.suffix), lambda c=c, s=s: self.submit_load(s, "echo", ECHO, c))
                    )
            steps.append(("submit true c%d" % c, lambda c=c: self.submit_load(self.main, "true", TRUE, c)))
        for mode in ("poll", "longpoll", "callback"):
            for s in self.stacks:
                steps.append(("e2e %s%s" % (mode, s.suffix), lambda mode=mode, s=s: self.e2e(s, mode)))
            if self.node is not None and mode != "longpoll":
                steps.append(("node e2e %s" % mode, lambda mode=mode: self.e2e_node(mode)))
        if self.webhook is not None:
            steps.append(("webhook sync", self.webhook_sync))
        steps.append(("flood cpu", self.flood_cpu))
        steps.append(("slow writer", self.slow_writer))
        steps.append(("100 MB output", lambda: self.output_time("httprunner")))
        if self.node is not None:
            steps.append(("node 100 MB output", lambda: self.output_time("node")))
        return steps

    async def run(self) -> None:
        say = self.opts.progress
        say("starting daemons and baselines")
        await self.start()
        steps = self.round_steps()
        only = self.opts.only
        if only:
            steps = [(name, step) for name, step in steps if any(pattern in name for pattern in only)]
            say("only: %s" % ", ".join(name for name, _ in steps))
        if not only or any("retained" in name for name, _ in steps):
            for stack in self.stacks:
                say("filling%s: %d jobs retained (RSS per job)" % (stack.suffix, self.size["retained"]))
                await self.fill(stack)
        if not only:
            say("peak RSS under 100 MB of output (%gs window)" % self.size["big_output_seconds"])
            await self.big_output()
        for r in range(self.size["rounds"]):
            shift = (r * 7) % len(steps)
            for name, step in steps[shift:] + steps[:shift]:
                say("round %d/%d: %s" % (r + 1, self.size["rounds"], name))
                await step()
        say("rounds done; checking for spawn failures")
        for daemon in [d for s in self.stacks for d in s.daemons]:
            listing = await get_json(daemon.port, "/jobs?state=spawn_failed&limit=1000")
            self.checks["spawn_failed_jobs"] = self.checks.get("spawn_failed_jobs", 0) + len(listing["jobs"])


# -- results ---------------------------------------------------------------------------


def machine_facts(opts: argparse.Namespace) -> dict[str, Any]:
    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=CHECKOUT).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    import twisted

    facts: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "uname_r": platform.release(),
        "python": platform.python_version(),
        "twisted": twisted.__version__,
        "commit": out(["git", "rev-parse", "--short", "HEAD"]),
        "uncommitted_changes": len(out(["git", "status", "--porcelain", "--untracked-files=no"]).splitlines()),
        "loadavg_at_start": os.getloadavg()[0],
        "wrk": shutil.which("wrk") is not None and not opts.no_wrk and not opts.quick,
        "webhook": out(["webhook", "-version"]) if shutil.which("webhook") and not opts.no_webhook else None,
        "node": out(["node", "--version"]) if shutil.which("node") and not opts.no_node else None,
        "quick": opts.quick,
        "max_output": opts.max_output,
        "poll_interval_s": opts.poll_interval,
        "daemon_args": opts.daemon_arg,
        "daemon_pythonpath": opts.pythonpath or "(installed)",
        "variants": {name: extra for name, extra in opts.variants},
    }
    try:
        with open("/proc/cpuinfo") as f:
            facts["cpu"] = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)  # type: ignore[union-attr]
    except (OSError, AttributeError):
        pass
    return facts


#: metrics measured on every store variant, compared with the default store
VARIANT_METRICS = (
    ("e2e_poll_jobs_per_s", False),
    ("e2e_longpoll_jobs_per_s", False),
    ("e2e_callback_jobs_per_s", False),
    ("server_cpu_ms_per_job_polled", True),
    ("server_cpu_ms_per_job", True),
    ("get_1_retained_c16_rps", False),
    ("get_many_retained_c16_rps", False),
    ("get_1_retained_c64_rps", False),
    ("get_many_retained_c64_rps", False),
    ("submit_echo_c16_rps", False),
    ("submit_echo_c64_rps", False),
    ("submit_echo_c64_p99_ms", True),
    ("rss_per_retained_job_bytes", True),
)


def variant_names(m: dict[str, float]) -> list[str]:
    return sorted({key.partition("@")[2] for key in m if "@" in key})


def ratios(m: dict[str, float]) -> dict[str, float]:
    r: dict[str, float] = {}

    def ratio(name: str, a: str, b: str) -> None:
        if m.get(a) and m.get(b):
            r[name] = m[a] / m[b]

    ratio("e2e_poll_vs_node", "e2e_poll_jobs_per_s", "node_e2e_poll_jobs_per_s")
    ratio("e2e_callback_vs_node", "e2e_callback_jobs_per_s", "node_e2e_callback_jobs_per_s")
    ratio("e2e_poll_vs_webhook", "e2e_poll_jobs_per_s", "webhook_sync_jobs_per_s")
    ratio("e2e_poll_vs_spawn_c16", "e2e_poll_jobs_per_s", "baseline_spawn_c16_jobs_per_s")
    ratio("e2e_longpoll_vs_poll", "e2e_longpoll_jobs_per_s", "e2e_poll_jobs_per_s")
    ratio("e2e_callback_vs_poll", "e2e_callback_jobs_per_s", "e2e_poll_jobs_per_s")
    ratio("cpu_per_polled_job_vs_node", "server_cpu_ms_per_job_polled", "node_cpu_ms_per_job_polled")
    ratio("output_100mb_time_vs_node", "output_100mb_seconds", "node_output_100mb_seconds")
    for c in (16, 64):
        ratio("get_1_retained_c%d_vs_klein" % c, "get_1_retained_c%d_rps" % c, "baseline_klein_get_c%d_rps" % c)
        ratio("get_many_retained_c%d_vs_klein" % c, "get_many_retained_c%d_rps" % c, "baseline_klein_get_c%d_rps" % c)
        ratio("get_many_retained_c%d_vs_1" % c, "get_many_retained_c%d_rps" % c, "get_1_retained_c%d_rps" % c)
    for c in (1, 16, 64):
        ratio("submit_echo_c%d_vs_klein_post" % c, "submit_echo_c%d_rps" % c, "baseline_klein_post_c%d_rps" % c)
    for name in variant_names(m):
        for key, _ in VARIANT_METRICS:
            ratio("%s@%s_vs_default" % (key, name), "%s@%s" % (key, name), key)
    return r


def targets(
    m: dict[str, float], r: dict[str, float], checks: dict[str, Any], max_output: int
) -> list[tuple[str, str, str, bool]]:
    """(target, measured, bound, met) for every target of the issues
    (issue 12's first; the ones met before are kept)."""
    t: list[tuple[str, str, str, bool]] = []
    if "e2e_poll_vs_node" in r:
        v = r["e2e_poll_vs_node"]
        t.append(("e2e poll vs Node original", "%.2fx" % v, ">= 1.20x", v >= 1.2))
    if "server_cpu_ms_per_job_polled" in m:
        v = m["server_cpu_ms_per_job_polled"]
        t.append(("daemon CPU per polled job", "%.2f ms" % v, "<= 0.80 ms", v <= 0.8))
    for c in (16, 64):
        for n in ("1", "many"):
            k = "get_%s_retained_c%d_vs_klein" % (n, c)
            if k in r:
                label = "GET /<id> c%d vs bare Klein (%s retained)" % (c, "1" if n == "1" else "10,000")
                t.append((label, "%.0f%%" % (100 * r[k]), ">= 80%", r[k] >= 0.8))
        k = "get_many_retained_c%d_vs_1" % c
        if k in r:
            t.append(("GET /<id> c%d, many retained vs 1" % c, "%.0f%%" % (100 * r[k]), ">= 95% (flat)", r[k] >= 0.95))
    if "e2e_callback_vs_poll" in r:
        v = r["e2e_callback_vs_poll"]
        t.append(("e2e callback vs poll", "%.2fx" % v, ">= 0.90x", v >= 0.9))
    if "output_100mb_time_vs_node" in r:
        v = r["output_100mb_time_vs_node"]
        t.append(("100 MB output time vs Node original", "%.2fx" % v, "<= 1.20x", v <= 1.2))
    elif "output_100mb_seconds" in m:
        v = m["output_100mb_seconds"]
        t.append(("100 MB output time (no Node to compare)", "%.2f s" % v, "-", True))
    if "flood_after_cap_daemon_cpu_percent" in m:
        v = m["flood_after_cap_daemon_cpu_percent"]
        t.append(("daemon CPU, job flooding after cap", "%.1f%%" % v, "< 5% of a core", v < 5))
    if "slow_writer_after_cap_slowdown" in m:
        v = m["slow_writer_after_cap_slowdown"]
        t.append(("slow writer after cap vs bare", "%.2fx" % v, "<= 1.10x (never slowed)", v <= 1.1))
    if "rss_per_retained_job_bytes" in m:
        v = m["rss_per_retained_job_bytes"]
        t.append(("RSS per retained finished job", "%.0f B" % v, "<= 1024 B", v <= 1024))
    if "output_100mb_peak_rss_over_idle_mib" in m:
        v = m["output_100mb_peak_rss_over_idle_mib"]
        bound = 2 * max_output / MiB + 16
        t.append(("peak RSS over idle, 100 MB output", "%.1f MiB" % v, "<= %.0f MiB" % bound, v <= bound))
    bad = checks.get("spawn_failed_jobs", 0) + checks.get("rejected_submissions", 0)
    t.append(("accepted jobs that could not start / rejected", "%d" % bad, "0", bad == 0))
    if "e2e_longpoll_vs_poll" in r:
        v = r["e2e_longpoll_vs_poll"]
        t.append(("e2e longpoll vs poll", "%.2fx" % v, ">= 0.90x", v >= 0.9))
    p99 = max(m.get("submit_echo_c64_p99_ms", 0), m.get("submit_true_c64_p99_ms", 0))
    t.append(("submit p99 at 64 connections", "%.1f ms" % p99, "<= 60 ms", p99 <= 60))
    if "e2e_poll_vs_webhook" in r:
        v = r["e2e_poll_vs_webhook"]
        t.append(("e2e poll vs webhook-sync (stretch)", "%.2fx" % v, ">= 1.00x", v >= 1.0))
    for name in variant_names(m):
        for key, lower in VARIANT_METRICS:
            k = "%s@%s_vs_default" % (key, name)
            if k in r and key in ("e2e_poll_jobs_per_s", "server_cpu_ms_per_job_polled", "get_many_retained_c16_rps"):
                v = r[k]
                ok = v <= 1.15 if lower else v >= 0.85
                t.append(("%s: %s vs default store" % (name, key), "%.2fx" % v, "at most 15% worse", ok))
    return t


def render(result: dict[str, Any]) -> str:
    lines = ["machine: " + ", ".join("%s=%s" % (k, v) for k, v in result["machine"].items()), ""]
    lines.append("%-44s %12s %12s %12s %3s" % ("metric (median of rounds)", "median", "min", "max", "n"))
    for key, value in result["metrics"].items():
        samples = result["samples"][key]
        lines.append("%-44s %12.2f %12.2f %12.2f %3d" % (key, value, min(samples), max(samples), len(samples)))
    lines.append("")
    lines.append("ratios:")
    for key, value in result["ratios"].items():
        lines.append("  %-42s %8.3f" % (key, value))
    lines.append("")
    lines.append("checks: " + json.dumps(result["checks"], sort_keys=True))
    for note in result.get("notes", []):
        lines.append("note: " + note)
    lines.append("")
    lines.append("%-52s %-12s %-24s %s" % ("target", "measured", "bound", "met"))
    for name, measured, bound, met in result["targets"]:
        lines.append("%-52s %-12s %-24s %s" % (name, measured, bound, "yes" if met else "NO"))
    return "\n".join(lines)


# -- store variants -----------------------------------------------------------------------


def parse_variants(opts: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """``--store SPEC`` and ``--variant NAME=ARGS`` -> [(name, daemon args)].

    ``{daemon}`` and ``{workdir}`` in the arguments are replaced per daemon,
    so two daemons never share a store: ``--store sqlite`` (or ``sqlite:``)
    puts each daemon's file in the run's temporary directory, and a
    ``sqlite:PATH`` without ``{daemon}`` gets the daemon's name added before
    the extension.
    """
    variants: list[tuple[str, list[str]]] = []
    for spec in opts.store:
        name = ""
        head = spec.split(":", 1)[0]
        if "=" in head:
            name, _, spec = spec.partition("=")
        if spec in ("sqlite", "sqlite:"):
            spec = "sqlite:{workdir}/{daemon}.sqlite3"
        elif spec.startswith("sqlite:") and "{daemon}" not in spec:
            root, ext = os.path.splitext(spec)
            spec = root + "-{daemon}" + ext
        variants.append((name or spec.split(":", 1)[0], ["--store", spec]))
    for text in opts.variant:
        name, sep, args = text.partition("=")
        if not sep or not name or "@" in name:
            raise SystemExit("--variant wants NAME=ARGS, not %r" % text)
        variants.append((name, shlex.split(args)))
    names = [name for name, _ in variants]
    if len(set(names)) != len(names):
        raise SystemExit("two variants named alike: %s (name them: --store NAME=SPEC)" % ", ".join(names))
    return variants


def daemon_options(opts: argparse.Namespace) -> str:
    """The text of ``twistd httprunner --help`` of the daemon under test."""
    env = dict(os.environ)
    if opts.pythonpath:
        env["PYTHONPATH"] = opts.pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    try:
        run = subprocess.run(
            [opts.twistd, "httprunner", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=tempfile.gettempdir(),
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return run.stdout


def supported_variants(
    opts: argparse.Namespace, variants: list[tuple[str, list[str]]]
) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """Keep the variants whose options the daemon knows; a note for each other.

    A daemon from before ``--store`` existed answers ``--store`` with a
    usage error; its variants are skipped rather than failing the run.
    """
    if not variants:
        return [], []
    help_text = daemon_options(opts)
    kept, notes = [], []
    for name, extra in variants:
        unknown = [a.split("=", 1)[0] for a in extra if a.startswith("--") and a.split("=", 1)[0] not in help_text]
        if unknown:
            notes.append("variant %s skipped: this httprunner does not know %s" % (name, ", ".join(unknown)))
        else:
            kept.append((name, extra))
    return kept, notes


async def amain(opts: argparse.Namespace) -> dict[str, Any]:
    size = dict(QUICK if opts.quick else FULL)
    if opts.rounds:
        size["rounds"] = opts.rounds
    workdir = tempfile.mkdtemp(prefix="httprunner-bench-")
    for note in opts.notes:
        opts.progress("note: " + note)
    bench = Bench(opts, size, workdir)
    facts = machine_facts(opts)
    # SIGTERM/SIGINT cancel the run, so the finally below stops every child
    # (a background shell job has SIGINT ignored; this handler still works).
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
    started = time.monotonic()
    try:
        await asyncio.wait_for(bench.run(), opts.time_limit)
    finally:
        opts.progress("stopping")
        bench.stop()
        await bench.receiver.stop()
        opts.progress("stopped")
    if opts.keep_logs:
        opts.progress("daemon logs kept in %s" % workdir)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    metrics = {k: statistics.median(v) for k, v in sorted(bench.samples.items())}
    r = ratios(metrics)
    facts["wall_seconds"] = round(time.monotonic() - started, 1)
    facts["rounds"] = size["rounds"]
    facts["retained"] = size["retained"]
    return {
        "machine": facts,
        "metrics": metrics,
        "samples": dict(sorted(bench.samples.items())),
        "ratios": r,
        "checks": bench.checks,
        "notes": bench.notes,
        "targets": targets(metrics, r, bench.checks, opts.max_output),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny counts, one round, asyncio client only (< 30 s)")
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--json", default="", help="write the results here (default benchmarks/results-<time>.json)")
    parser.add_argument(
        "--twistd", default=os.path.join(os.path.dirname(sys.executable), "twistd"), help="the twistd to run"
    )
    parser.add_argument(
        "--pythonpath",
        default=CHECKOUT,
        help="prepended to PYTHONPATH of the daemons (default: this checkout; '' for the installed httprunner)",
    )
    parser.add_argument("--max-output", type=int, default=4 * MiB, help="--max-output of the flood daemon (bytes)")
    parser.add_argument("--poll-interval", type=float, default=0.005, help="seconds between polls in the e2e poll mode")
    parser.add_argument(
        "--daemon-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra option for every httprunner daemon (repeatable), e.g. --daemon-arg=--no-access-log",
    )
    parser.add_argument(
        "--store",
        action="append",
        default=[],
        metavar="[NAME=]SPEC",
        help="also measure the API daemons with --store SPEC, side by side with the default store "
        "(repeatable; e.g. sqlite, sqlite:/tmp/b.db, postgresql://user@host/db); metrics get @NAME",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="also measure the API daemons with these extra options (shell words; {daemon} and "
        "{workdir} are replaced per daemon), e.g. 'pg=--store postgresql:///b --store-schema b_{daemon}'",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="run only the round steps whose name contains TEXT (repeatable; names as in the progress "
        "lines, e.g. 'e2e poll', '100 MB'); the fill runs only for GET steps, the peak-RSS step not at all",
    )
    parser.add_argument("--no-node", action="store_true", help="skip the Node.js original even if node is installed")
    parser.add_argument(
        "--node-peer",
        default=peers.DEFAULT_NODE_PEER,
        metavar="DIR",
        help="the Node original's source (default: %(default)s); installed under " + peers.cache_dir(),
    )
    parser.add_argument(
        "--no-wrk", action="store_true", help="measure GET/s with the asyncio client even if wrk is installed"
    )
    parser.add_argument("--no-webhook", action="store_true", help="skip webhook even if it is installed")
    parser.add_argument("--time-limit", type=float, default=900.0, help="abort after this many seconds")
    parser.add_argument("--keep-logs", action="store_true", help="keep the daemons' logs (path printed)")
    parser.add_argument("-q", "--silent", action="store_true", help="no progress lines on stderr")
    opts = parser.parse_args(argv)
    t0 = time.monotonic()
    opts.progress = (
        (lambda msg: None)
        if opts.silent
        else (lambda msg: print("[bench %6.1fs] %s" % (time.monotonic() - t0, msg), file=sys.stderr, flush=True))
    )
    opts.variants, opts.notes = supported_variants(opts, parse_variants(opts))
    try:
        result = asyncio.run(amain(opts))
    except asyncio.CancelledError:
        print("interrupted: every child was stopped", file=sys.stderr)
        return 130
    path = opts.json or os.path.join(HERE, "results-%s.json" % time.strftime("%Y%m%d-%H%M%S"))
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(render(result))
    print("\nresults written to %s" % path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
