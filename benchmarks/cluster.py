"""The stores side by side, and a cluster of two nodes against one.

    python benchmarks/cluster.py [--postgres postgresql://postgres@127.0.0.1/test] [--rounds 3] [--seconds 8]

Numbers, not pass/fail.  In interleaved rounds, the same end-to-end load
(16 clients, each submitting ``echo foo`` and polling it until it ends,
as run.py's ``e2e_poll``) runs against:

- one daemon with the memory store, one with the SQLite store, one node
  on PostgreSQL (a schema of its own);
- two nodes on one PostgreSQL schema, the clients split between them.

For each it prints jobs/s, the daemons' CPU per job (utime + stime from
``/proc``, summed over the nodes), PostgreSQL's CPU per job (every
``postgres`` process of the machine, from ``/proc``: the server is the
machine's, so other load on it counts too), the jobs' own CPU and the
load generator's, how many of the machine's cores were busy, and the statements and
transactions each job cost the database (the nodes'
``httprunner_cluster_statements_total``; ``pg_stat_database``).  Medians
of the rounds; ``--json FILE`` writes them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import types
from typing import Any

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import httpload  # noqa: E402
import run as bench  # noqa: E402

LIMITS = ["--max-jobs", "10000", "--max-running", "64", "--max-queued", "20000", "--max-connections-per-peer", "1024"]


def postgres_cpu_seconds() -> float:
    """CPU seconds of every postgres process on this machine."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name.startswith("postgres"):
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def children_cpu_seconds(pid: int) -> float:
    """CPU seconds of the reaped children of ``pid`` (the jobs it ran)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def transactions(uri: str) -> int:
    with psycopg.connect(uri, autocommit=True) as c:
        row = c.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
        return int(row.fetchone()[0])  # type: ignore[index]


async def statements(port: int) -> float:
    text = await _metrics(port)
    for line in text.splitlines():
        if line.startswith("httprunner_cluster_statements_total "):
            return float(line.split()[1])
    return 0.0


async def _metrics(port: int) -> str:
    conn = httpload.Connection("127.0.0.1", port)
    try:
        _, body = await conn.request("GET", "/metrics", None)
        return body.decode()
    finally:
        conn.close()


async def e2e_poll(ports: list[int], seconds: float) -> tuple[int, float]:
    """16 clients spread over ``ports``; returns (jobs, elapsed)."""

    async def one(conn: httpload.Connection, n: int) -> None:
        status, answer = await conn.request("POST", "/", bench.ECHO)
        if status != 202:
            raise RuntimeError("submission answered %d: %r" % (status, answer[:200]))
        job = json.loads(answer)
        while job["code"] is None:
            await asyncio.sleep(0.005)
            _, answer = await conn.request("GET", "/" + job["id"])
            job = json.loads(answer)
        if job["state"] != "succeeded":
            raise RuntimeError("job ended %s" % job["state"])

    share = 16 // len(ports)
    results = await asyncio.gather(
        *(httpload.run_workers(share, 10**9, one, "127.0.0.1", port, seconds) for port in ports)
    )
    jobs = sum(done for _, done in results)
    elapsed = max(elapsed for elapsed, _ in results)
    return jobs, elapsed


class Setup:
    def __init__(self, name: str, daemons: list[bench.Daemon], uri: str | None) -> None:
        self.name = name
        self.daemons = daemons
        self.uri = uri


async def measure(setup: Setup, seconds: float) -> dict[str, float]:
    ports = [d.port for d in setup.daemons]
    cpu0 = sum(bench.cpu_seconds(d.pid) for d in setup.daemons)
    jobs0 = sum(children_cpu_seconds(d.pid) for d in setup.daemons)
    me0 = time.process_time()
    busy0, total0 = machine_busy()
    pg0 = postgres_cpu_seconds()
    tx0 = transactions(setup.uri) if setup.uri else 0
    st0 = sum([await statements(p) for p in ports]) if setup.uri else 0.0
    jobs, elapsed = await e2e_poll(ports, seconds)
    cpu1 = sum(bench.cpu_seconds(d.pid) for d in setup.daemons)
    jobs1 = sum(children_cpu_seconds(d.pid) for d in setup.daemons)
    me1 = time.process_time()
    busy1, total1 = machine_busy()
    pg1 = postgres_cpu_seconds()
    result = {
        "jobs_per_s": jobs / elapsed,
        "daemon_cpu_ms_per_job": (cpu1 - cpu0) * 1000 / max(jobs, 1),
        # what else the machine's cores did per job: the jobs' own processes
        # (echo), the load generator (this process), and the machine's
        # utilisation over the run (cores busy, out of os.cpu_count())
        "jobs_cpu_ms_per_job": (jobs1 - jobs0) * 1000 / max(jobs, 1),
        "client_cpu_ms_per_job": (me1 - me0) * 1000 / max(jobs, 1),
        "cores_busy": (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1),
    }
    if setup.uri:
        tx1 = transactions(setup.uri)
        st1 = sum([await statements(p) for p in ports])
        result["postgres_cpu_ms_per_job"] = (pg1 - pg0) * 1000 / max(jobs, 1)
        result["transactions_per_job"] = (tx1 - tx0) / max(jobs, 1)
        result["statements_per_job"] = (st1 - st0) / max(jobs, 1)
    return result


async def amain(opts: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="httprunner-cluster-bench-")
    dopts = types.SimpleNamespace(
        pythonpath=bench.CHECKOUT,
        twistd=os.path.join(os.path.dirname(sys.executable), "twistd"),
        keep_logs=False,
        daemon_arg=[],
    )
    tag = secrets.token_hex(3)
    one_schema, two_schema = "bench_one_%s" % tag, "bench_two_%s" % tag

    def node(name: str, schema: str) -> bench.Daemon:
        return bench.Daemon(
            name,
            [*LIMITS, "--store", opts.postgres, "--store-schema", schema, "--node", name],
            dopts,
            workdir,
        )

    setups = [
        Setup("memory", [bench.Daemon("memory", LIMITS, dopts, workdir)], None),
        Setup(
            "sqlite",
            [bench.Daemon("sqlite", [*LIMITS, "--store", "sqlite:%s/jobs.db" % workdir], dopts, workdir)],
            None,
        ),
        Setup("pg_one_node", [node("solo", one_schema)], opts.postgres),
        Setup("pg_two_nodes", [node("a", two_schema), node("b", two_schema)], opts.postgres),
    ]
    samples: dict[str, list[float]] = {}
    try:
        for setup in setups:
            for daemon in setup.daemons:
                await daemon.start()
        for n in range(opts.rounds):
            order = setups[n % len(setups) :] + setups[: n % len(setups)]
            for setup in order:
                result = await measure(setup, opts.seconds)
                for key, value in result.items():
                    samples.setdefault("%s@%s" % (key, setup.name), []).append(value)
                print(setup.name, json.dumps({k: round(v, 3) for k, v in result.items()}), flush=True)
    finally:
        for setup in setups:
            for daemon in setup.daemons:
                daemon.stop()
        with psycopg.connect(opts.postgres, autocommit=True) as c:
            for schema in (one_schema, two_schema):
                c.execute('DROP SCHEMA IF EXISTS "%s" CASCADE' % schema)
        subprocess.run(["rm", "-rf", workdir], check=False)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    ratios = {
        "sqlite_vs_memory_jobs_per_s": medians["jobs_per_s@sqlite"] / medians["jobs_per_s@memory"],
        "sqlite_vs_memory_cpu_per_job": medians["daemon_cpu_ms_per_job@sqlite"]
        / medians["daemon_cpu_ms_per_job@memory"],
        "pg_vs_memory_jobs_per_s": medians["jobs_per_s@pg_one_node"] / medians["jobs_per_s@memory"],
        "two_nodes_vs_one_jobs_per_s": medians["jobs_per_s@pg_two_nodes"] / medians["jobs_per_s@pg_one_node"],
    }
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rounds": opts.rounds,
        "seconds": opts.seconds,
        "loadavg_at_start": os.getloadavg()[0],
        "medians": medians,
        "ratios": ratios,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default=os.environ.get("HTTPRUNNER_TEST_POSTGRES", "postgresql:///postgres"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--json", default=None)
    opts = parser.parse_args()
    result = asyncio.run(amain(opts))
    print()
    for key in sorted(result["medians"]):
        print("%-45s %10.3f" % (key, result["medians"][key]))
    print()
    for key, value in result["ratios"].items():
        print("%-45s %10.3f" % (key, value))
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
