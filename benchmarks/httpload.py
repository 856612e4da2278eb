"""Load generation for the benchmarks: a small asyncio HTTP/1.1 client, a
callback receiver, and a wrapper around ``wrk``.

The asyncio client keeps one keep-alive connection per worker and records
the latency of every request, so submit p50/p99 are exact, and it can stop
after a number of requests *or* a duration, whichever comes first (every
run is bounded in time and count).  ``wrk`` (C, Debian package) is used for
the read-only GET throughput runs, where a Python client would be the
bottleneck on a 2-core machine; the same tool measures the bare Klein
route and the daemon, so their ratio is fair.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

Request = tuple[str, str, bytes | None]


class HTTPError(Exception):
    """The server broke the framing or closed the connection."""


class Connection:
    """One keep-alive HTTP/1.1 connection to ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request, return ``(status, body)``; reconnects once if the server closed."""
        for attempt in (0, 1):
            if self.writer is None:
                await self._connect()
            try:
                return await self._request(method, path, body)
            except (ConnectionError, asyncio.IncompleteReadError, HTTPError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = "%s %s HTTP/1.1\r\nHost: %s:%d\r\n" % (method, path, self.host, self.port)
        if body is not None:
            head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        self.writer.write(head.encode("ascii") + b"\r\n" + (body or b""))
        status_line = await self.reader.readline()
        if not status_line:
            raise HTTPError("connection closed")
        status = int(status_line.split(None, 2)[1])
        length = None
        chunked = False
        close = False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            data = bytearray()
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                data += await self.reader.readexactly(size)
                await self.reader.readline()
            payload = bytes(data)
        elif length is not None:
            payload = await self.reader.readexactly(length)
        else:
            payload = await self.reader.read()
            close = True
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (0 for an empty list)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))
    return ordered[index]


async def closed_loop(
    host: str,
    port: int,
    connections: int,
    make_request: Callable[[int], Request],
    *,
    count: int,
    duration: float,
    on_response: Callable[[int, bytes], None] | None = None,
) -> dict[str, Any]:
    """``connections`` workers send requests back to back until ``count``
    requests were sent or ``duration`` seconds passed.

    Returns requests/s, p50/p99 latency (ms) and the status counts.
    """
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    issued = 0
    deadline = time.monotonic() + duration

    async def worker() -> None:
        nonlocal issued
        conn = Connection(host, port)
        try:
            while issued < count and time.monotonic() < deadline:
                n = issued
                issued += 1
                method, path, body = make_request(n)
                t0 = time.perf_counter()
                status, payload = await conn.request(method, path, body)
                latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1
                if on_response is not None:
                    on_response(status, payload)
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "statuses": statuses,
        "elapsed": elapsed,
    }


async def run_workers(
    workers: int,
    total: int,
    job: Callable[[Connection, int], Awaitable[None]],
    host: str,
    port: int,
    duration: float = 3600.0,
) -> tuple[float, int]:
    """Run ``job`` on ``workers`` connections until ``total`` calls were
    started or ``duration`` seconds passed; return ``(elapsed, calls done)``."""
    next_index = 0
    done = 0
    deadline = time.monotonic() + duration

    async def worker() -> None:
        nonlocal next_index, done
        conn = Connection(host, port)
        try:
            while next_index < total and time.monotonic() < deadline:
                n = next_index
                next_index += 1
                await job(conn, n)
                done += 1
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.perf_counter() - started, done


class CallbackReceiver:
    """A minimal HTTP server on loopback that resolves a future per job id
    when the daemon POSTs the finished job to it."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.early: dict[str, dict[str, Any]] = {}
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.received = 0
        #: open connections, closed at stop (a peer may keep them alive)
        self.connections: dict[asyncio.StreamWriter, asyncio.Task[Any] | None] = {}

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d/done" % self.port

    def forget(self, job_id: str) -> None:
        """Stop waiting for ``job_id`` (given up on)."""
        self.waiting.pop(job_id, None)
        self.early.pop(job_id, None)

    def expect(self, job_id: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if job_id in self.early:
            future.set_result(self.early.pop(job_id))
        else:
            self.waiting[job_id] = future
        return future

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections[writer] = asyncio.current_task()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                length = 0
                while True:
                    header = await reader.readline()
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                # when the whole body was in: parsing a large one is ours
                received_at = time.perf_counter()
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                self.received += 1
                job = json.loads(body)
                job["_received_at"] = received_at
                future = self.waiting.pop(job["id"], None)
                if future is None:
                    # the callback can beat the 202 to the client
                    self.early[job["id"]] = job
                elif not future.done():
                    future.set_result(job)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.connections.pop(writer, None)
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        # Closing our end ends each handler's read with EOF; waiting for
        # them keeps asyncio from cancelling them at exit (which 3.11
        # reports as an error).
        tasks = [task for task in self.connections.values() if task is not None]
        for writer in list(self.connections):
            writer.close()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self.server is not None:
            await self.server.wait_closed()


# -- wrk ----------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        return 0.0
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, connections: int, duration: float, method: str = "GET", body: bytes | None = None) -> dict[str, Any]:
    """Run ``wrk --latency`` for ``duration`` seconds; return rps, p50/p99 and errors."""
    threads = max(1, min(2, connections))
    args = [
        "wrk",
        "-t%d" % threads,
        "-c%d" % connections,
        "-d%ds" % max(1, round(duration)),
        "--latency",
        "--timeout",
        "10s",
    ]
    script = None
    if method != "GET" or body is not None:
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write(
            "wrk.method = %s\nwrk.body = %s\nwrk.headers['Content-Type'] = 'application/json'\n"
            % (json.dumps(method), json.dumps((body or b"").decode()))
        )
        script.close()
        args += ["-s", script.name]
    try:
        out = subprocess.run(args + [url], capture_output=True, text=True, timeout=duration + 30, check=True).stdout
    finally:
        if script is not None:
            os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.MULTILINE))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": _ms(pct.get("50", "0ms")),
        "p99_ms": _ms(pct.get("99", "0ms")),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
    }
