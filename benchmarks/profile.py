"""Profile a daemon under one of the benchmark loads with py-spy.

    python benchmarks/profile.py e2e-poll [--seconds 15] [--daemon-arg=--no-access-log]
    python benchmarks/profile.py get|flood|output-100mb
    python benchmarks/profile.py --aggregate prof.raw      # re-read a raw profile

Starts one ``twistd -n httprunner`` (this checkout, as run.py does), puts
the load on it, records the daemon with ``py-spy record --format raw``
(``pip install py-spy``; run as root or with ptrace allowed) and prints
the functions with the largest shares of on-CPU samples, by self time and
inclusive time, plus the share of a few groups named in RESULTS.md
(logging, spawn, JSON, routing, ...).  The daemon's CPU per job and the
load's rate are printed too, so a change can be checked with the profiler
attached (py-spy costs the daemon a little; compare like with like).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import httpload  # noqa: E402
import run as bench  # noqa: E402

#: groups of frames reported as one share (substring of "function (file)")
GROUPS = {
    "logging (twisted.logger, all events)": ("twisted/logger/",),
    "access log (site.log_access)": ("log_access",),
    "spawn (SessionProcess.__init__)": ("spawn_session",),
    "posix_spawnp": ("_trySpawnInsteadOfFork",),
    "job JSON (to_json_bytes)": ("to_json_bytes",),
    "werkzeug routing": ("werkzeug/routing",),
    "klein": ("klein/",),
    "guard (GuardedResource._refuse)": ("_refuse (",),
    "process end (process_ended)": ("process_ended",),
    "reaping (reapProcess)": ("reapProcess",),
    "drain past the cap (_drain_tick)": ("_drain_tick",),
    "epoll wait (idle)": ("doPoll",),
}


def aggregate(path: str, top: int = 25) -> str:
    """Self and inclusive shares per function of a py-spy raw profile."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = [frame for frame in stack.split(";") if frame]
            # py-spy names the thread first ("process 1:..." / "thread ..."), skip it
            frames = [frame for frame in frames if not frame.startswith(("process ", "thread "))]
            if not frames:
                continue
            total += count
            self_time[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
            joined = ";".join(frames)
            for name, needles in GROUPS.items():
                if any(needle in joined for needle in needles):
                    groups[name] += count
    if not total:
        return "no samples"
    lines = ["%d samples" % total, "", "self:"]
    for frame, count in self_time.most_common(top):
        lines.append("  %5.1f%%  %s" % (100 * count / total, frame))
    lines += ["", "inclusive:"]
    for frame, count in inclusive.most_common(top):
        lines.append("  %5.1f%%  %s" % (100 * count / total, frame))
    lines += ["", "groups (inclusive):"]
    for name in GROUPS:
        lines.append("  %5.1f%%  %s" % (100 * groups[name] / total, name))
    return "\n".join(lines)


async def load(kind: str, daemon: bench.Daemon, seconds: float, out: dict[str, Any]) -> None:
    port = daemon.port
    echo = bench.ECHO
    deadline = time.monotonic() + seconds
    if kind in ("e2e-poll", "e2e-longpoll", "e2e-callback"):
        receiver = httpload.CallbackReceiver()
        await receiver.start()
        body = echo
        if kind == "e2e-callback":
            body = json.dumps({"command": "echo", "args": "foo", "callback": receiver.url}).encode()

        async def one(conn: httpload.Connection, n: int) -> None:
            status, answer = await conn.request("POST", "/", body)
            job = json.loads(answer)
            if kind == "e2e-callback":
                job = await asyncio.wait_for(receiver.expect(job["id"]), 60)
            while job["code"] is None:
                if kind == "e2e-poll":
                    await asyncio.sleep(0.005)
                    _, answer = await conn.request("GET", "/" + job["id"])
                else:
                    _, answer = await conn.request("GET", "/%s?wait=30" % job["id"])
                job = json.loads(answer)

        elapsed, done = await httpload.run_workers(16, 10**9, one, "127.0.0.1", port, seconds)
        await receiver.stop()
        out["jobs_per_s"] = done / elapsed
        out["jobs"] = done
    elif kind == "get":
        job = await bench.submit(port, echo)
        await bench.wait_job(port, job["id"], lambda j: j["code"] is not None, 10)
        if shutil.which("wrk"):
            result = httpload.wrk("http://127.0.0.1:%d/%s" % (port, job["id"]), 16, seconds)
        else:
            result = await httpload.closed_loop(
                "127.0.0.1", port, 16, lambda n: ("GET", "/" + job["id"], None), count=10**9, duration=seconds
            )
        out["get_per_s"] = result["rps"]
    elif kind == "flood":
        job = await bench.submit(port, json.dumps({"command": "yes"}).encode())
        await asyncio.sleep(seconds)
        await bench.cancel(port, job["id"])
    elif kind == "output-100mb":
        jobs = 0
        while time.monotonic() < deadline:
            job = await bench.submit(port, json.dumps({"command": "head", "args": "-c 100000000 /dev/zero"}).encode())
            await bench.wait_job(port, job["id"], lambda j: j["code"] is not None, 60)
            jobs += 1
        out["jobs"] = jobs
    else:
        raise SystemExit("unknown load %r" % kind)


async def amain(opts: argparse.Namespace) -> None:
    workdir = tempfile.mkdtemp(prefix="httprunner-profile-")
    opts.pythonpath = bench.CHECKOUT
    opts.twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    daemon = bench.Daemon(
        "profiled",
        ["--max-jobs", "10000", "--max-running", "64", "--max-queued", "20000", "--max-connections-per-peer", "1024"],
        opts,
        workdir,
    )
    await daemon.start()
    out: dict[str, Any] = {}
    try:
        raw = opts.output or os.path.join(workdir, "prof.raw")
        spy = subprocess.Popen(
            [
                opts.py_spy,
                "record",
                "-p",
                str(daemon.pid),
                "-d",
                str(int(opts.seconds)),
                "-r",
                str(opts.rate),
                "--format",
                "raw",
                "-o",
                raw,
                "--nonblocking",
            ]
            + (["--idle"] if opts.idle else []),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)  # py-spy attaches
        cpu0 = bench.cpu_seconds(daemon.pid)
        await load(opts.load, daemon, opts.seconds - 2, out)
        cpu1 = bench.cpu_seconds(daemon.pid)
        spy.wait(opts.seconds + 30)
        if out.get("jobs"):
            out["daemon_cpu_ms_per_job"] = (cpu1 - cpu0) * 1000 / out["jobs"]
        print(json.dumps(out))
        print(aggregate(raw, opts.top))
        if opts.output:
            print("raw profile in", raw)
    finally:
        daemon.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "load", nargs="?", default="e2e-poll", help="e2e-poll, e2e-longpoll, e2e-callback, get, flood, output-100mb"
    )
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--idle", action="store_true", help="count idle samples too (py-spy --idle)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("-o", "--output", default="", help="keep the raw profile here")
    parser.add_argument("--daemon-arg", action="append", default=[], metavar="ARG")
    parser.add_argument(
        "--py-spy", default=shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    )
    parser.add_argument("--aggregate", metavar="RAW", help="only print the shares of an existing raw profile")
    opts = parser.parse_args()
    if opts.aggregate:
        print(aggregate(opts.aggregate, opts.top))
        return 0
    asyncio.run(amain(opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
