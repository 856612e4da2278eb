"""``httprunner-client``: run commands on an httprunner daemon from a shell.

The headline is ``httprunner-client run -- ffmpeg -i a.mp4 b.webm``: it
submits the job, streams the job's stdout and stderr to ours as they are
written, and exits with the job's exit code, so a remote command behaves
like a local one (Ctrl-C cancels it).  The other commands (``submit``,
``status``, ``wait``, ``logs``, ``cancel``, ``list``) are thin wrappers over
the HTTP API of DESIGN.md section 2.

This module is deliberately standard library only (``http.client``,
``argparse``, threads): it must start fast and run wherever the package is
installed, so it never imports Twisted or anything else from the daemon.

Exit codes of the client itself sit in a block (200-207) that exit codes of
ordinary programs and of signals (128 + n, at most 192) do not reach, so a
script can tell "the job failed" from "the client could not do its work".
"""

from __future__ import annotations

import argparse
import email.utils
import functools
import http.client
import json
import os
import shlex
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO, NamedTuple, NoReturn, TypeVar

from httprunner import __version__

PROG = "httprunner-client"
DEFAULT_URL = "http://127.0.0.1:9000"
#: ``--url unix:PATH`` reaches a daemon listening on a unix socket
UNIX_PREFIX = "unix:"

# Exit codes of the client itself (documented in docs/client.rst).
EXIT_OK = 0
EXIT_USAGE = 200  #: bad options or arguments, unreadable token or stdin file
EXIT_CONNECTION = 201  #: cannot reach the server, or lost it for good
EXIT_HTTP = 202  #: the server refused the request (400, 413, other 4xx/5xx) or answered nonsense
EXIT_AUTH = 203  #: 401 (missing or wrong token) or 403 (not allowed)
EXIT_NOT_FOUND = 204  #: 404: unknown or evicted job
EXIT_BUSY = 205  #: 503 (queue full or out of resources) after the retries; try again later
EXIT_WAIT_TIMEOUT = 206  #: ``wait --timeout`` elapsed before the job ended
EXIT_LOST = 207  #: the job was lost: it was running when its daemon (or cluster node) died
EXIT_INTERRUPTED = 130  #: Ctrl-C (128 + SIGINT), as a shell reports it

#: how long ``wait`` asks the server to hold one long-poll, in seconds
LONG_POLL = 30.0
#: how long to keep reconnecting after the server went away mid-job
RECONNECT_FOR = 60.0
#: connect timeout, and read timeout of ordinary (non-streaming) requests
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
#: how long the client must have been silent before a progress line appears
PROGRESS_IDLE = 1.0
#: how often the progress line is redrawn, and the job state refreshed
PROGRESS_TICK = 1.0
PROGRESS_REFRESH = 5.0
READ_SIZE = 64 * 1024
#: a ``503`` (queue full, out of processes, too many connections) is
#: retried after its ``Retry-After``, at most this many times and while the
#: waits add up to at most BUSY_RETRY_FOR seconds (``--no-retry``: never)
BUSY_RETRIES = 5
BUSY_RETRY_FOR = 60.0
#: the wait when a 503 has no usable ``Retry-After``
BUSY_DEFAULT_WAIT = 1.0

JOB_ID_CHARS = frozenset("0123456789abcdef")


# -- errors ------------------------------------------------------------------


class ClientError(Exception):
    """A failure reported as one line on stderr and a client exit code."""

    exit_code = EXIT_HTTP

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(ClientError):
    exit_code = EXIT_USAGE


class ConnectionFailed(ClientError):
    """The server could not be reached, or the connection broke."""

    exit_code = EXIT_CONNECTION


class HTTPStatusError(ClientError):
    """The server answered with an error status; ``error`` is its explanation."""

    def __init__(self, status: int, reason: str, error: str | None, headers: Mapping[str, str]) -> None:
        self.status = status
        self.reason = reason
        self.error = error
        self.retry_after = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
        super().__init__(self._describe(), _exit_code_for_status(status))

    def _describe(self) -> str:
        text = f"{self.status} {self.reason}"
        if self.error:
            text += f": {self.error}"
        if self.status == 401:
            text += " (give a token with --token-file or HTTPRUNNER_TOKEN)"
        elif self.status == 503 and self.retry_after:
            text += f" (retry after {self.retry_after} s)"
        return text


def _exit_code_for_status(status: int) -> int:
    if status in (401, 403):
        return EXIT_AUTH
    if status == 404:
        return EXIT_NOT_FOUND
    if status == 503:
        return EXIT_BUSY
    return EXIT_HTTP


class OutputClosed(Exception):
    """Our stdout or stderr is a pipe whose reader went away."""


class Interrupted(Exception):
    """A terminating signal arrived while we were running a job."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _one_line(text: str, limit: int = 300) -> str:
    """Server text made safe for a single line of a terminal."""
    text = " ".join(text.split())
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- HTTP --------------------------------------------------------------------


class Response(NamedTuple):
    """A whole (small) response of the daemon."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise ClientError(f"the server answered {self.status} with a body that is not JSON") from None


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix stream socket (a daemon's ``--listen unix:PATH``).

    The ``Host`` header says ``localhost``: the daemon checks a unix
    listener's Host only against ``--allowed-host``, which always admits
    ``localhost`` there.
    """

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def retry_after_seconds(value: str | None, now: Callable[[], float] = time.time) -> float:
    """The wait a ``Retry-After`` header asks for (delay seconds or an
    HTTP date); BUSY_DEFAULT_WAIT when it is missing or unreadable."""
    if value is None:
        return BUSY_DEFAULT_WAIT
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return BUSY_DEFAULT_WAIT
    if when.tzinfo is None:
        return BUSY_DEFAULT_WAIT
    return max(0.0, when.timestamp() - now())


class Server:
    """One httprunner daemon, reached with ``http.client`` (a connection per request).

    A fresh connection per request keeps threads independent and a broken
    stream from poisoning anything else; on loopback it costs nothing.
    Redirects are never followed (the bearer token must not travel to
    another host).  A ``503`` is retried after its ``Retry-After`` (see
    BUSY_RETRIES) unless ``retry_busy`` is false; ``notify`` is told of
    each retry.
    """

    #: how the client waits before a retry (tests replace it)
    sleep = staticmethod(time.sleep)

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        retry_busy: bool = True,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.token = token
        self.retry_busy = retry_busy
        self.notify = notify or (lambda message: None)
        self.url = url
        if url.startswith(UNIX_PREFIX):
            path = url[len(UNIX_PREFIX) :]
            if not path or path.startswith("//") or "\0" in path:
                raise UsageError(f"--url unix: wants the socket's path, as in unix:/run/httprunner.sock, not {url!r}")
            self.scheme = "unix"
            self.socket_path: str | None = path
            self.host = "localhost"
            self.port = 0
            self.prefix = ""
            return
        self.socket_path = None
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--url must be an http:// or https:// URL or unix:SOCKET_PATH, not {url!r}")
        if parts.username is not None or parts.password is not None:
            raise UsageError("--url must not contain credentials; use --token-file or HTTPRUNNER_TOKEN")
        if parts.query or parts.fragment:
            raise UsageError(f"--url must not have a query or fragment: {url!r}")
        try:
            port = parts.port
        except ValueError:
            raise UsageError(f"--url has a bad port: {url!r}") from None
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        # A daemon behind a reverse proxy may live under a path prefix.
        self.prefix = parts.path.rstrip("/")

    @property
    def where(self) -> str:
        """The daemon's address, for messages."""
        if self.socket_path is not None:
            return UNIX_PREFIX + self.socket_path
        return f"{self.scheme}://{self.host}:{self.port}"

    # The connection is built in one place so tests can replace it.
    def connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.socket_path is not None:
            return UnixHTTPConnection(self.socket_path, timeout)
        if self.scheme == "https":
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def target(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        target = self.prefix + path
        if query:
            target += "?" + urllib.parse.urlencode(query)
        return target

    def _headers(self, has_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": f"{PROG}/{__version__}"}
        if has_body:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _connection_error(self, exc: BaseException) -> ConnectionFailed:
        where = self.where
        if self.socket_path is not None and isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
            why = "no daemon listens on that socket (is httprunner running with --listen unix:...?)"
        elif isinstance(exc, ConnectionRefusedError):
            why = "connection refused (is httprunner running there? set --url or HTTPRUNNER_URL)"
        elif isinstance(exc, socket.gaierror):
            why = f"cannot resolve {self.host!r}"
        elif isinstance(exc, (socket.timeout, TimeoutError)):
            why = "timed out"
        elif isinstance(exc, ssl.SSLError):
            why = f"TLS error: {exc.reason or exc}"
        elif isinstance(exc, http.client.HTTPException):
            why = f"the connection broke ({type(exc).__name__})"
        elif isinstance(exc, OSError) and exc.strerror:
            why = exc.strerror.lower()
        else:
            why = str(exc) or type(exc).__name__
        return ConnectionFailed(f"cannot talk to {where}: {why}")

    def open(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = READ_TIMEOUT,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request; return the open connection and response headers.

        Error statuses are raised as :class:`HTTPStatusError` (body read,
        connection closed); the caller reads and closes a success.  A
        ``503`` is first retried after its ``Retry-After`` (a 503 means
        the daemon took nothing on, so even a submission is safe to send
        again), at most BUSY_RETRIES times within BUSY_RETRY_FOR seconds.
        ``timeout=None`` means no read timeout (a follow stream may stay
        silent for hours); TCP keepalive then notices a dead peer.
        """
        data = None if body is None else json.dumps(body).encode("utf-8")
        waited = 0.0
        retries = 0
        while True:
            try:
                return self._open_once(method, path, query, data, timeout)
            except HTTPStatusError as exc:
                if exc.status != 503 or not self.retry_busy or retries >= BUSY_RETRIES:
                    raise
                wait = retry_after_seconds(exc.retry_after)
                if waited + wait > BUSY_RETRY_FOR:
                    raise
                retries += 1
                waited += wait
                self.notify(
                    f"{exc.status} {exc.reason}: {exc.error or 'the daemon is busy'}; "
                    f"retrying in {_seconds(round(wait, 1))} s ({retries} of {BUSY_RETRIES})"
                )
                self.sleep(wait)

    def _open_once(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None,
        data: bytes | None,
        timeout: float | None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self.connect(CONNECT_TIMEOUT)
        try:
            conn.connect()
            conn.sock.settimeout(timeout)
            if timeout is None and self.socket_path is None:
                _enable_keepalive(conn.sock)
            conn.request(method, self.target(path, query), body=data, headers=self._headers(data is not None))
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._connection_error(exc) from None
        if response.status >= 400:
            try:
                raw = response.read(64 * 1024)
            except (OSError, http.client.HTTPException):
                raw = b""
            finally:
                conn.close()
            raise HTTPStatusError(response.status, response.reason, _error_text(raw), dict(response.getheaders()))
        return conn, response

    def request(
        self,
        method: str,
        path: str,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = READ_TIMEOUT,
    ) -> Response:
        conn, response = self.open(method, path, query, body, timeout)
        try:
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._connection_error(exc) from None
        finally:
            conn.close()
        return Response(response.status, response.reason, dict(response.getheaders()), raw)

    # The API, one method per route used.

    def submit(self, payload: dict[str, Any]) -> dict[str, Any]:
        return _job_json(self.request("POST", "/", body=payload).json())

    def job(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        if wait is None:
            return _job_json(self.request("GET", f"/{job_id}").json())
        return _job_json(
            self.request("GET", f"/{job_id}", {"wait": _seconds(wait)}, timeout=wait + READ_TIMEOUT).json()
        )

    def cancel(self, job_id: str) -> Response:
        return self.request("DELETE", f"/{job_id}")

    def jobs(
        self, state: str | None = None, limit: int | None = None, before: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of ``GET /jobs``: the jobs and the cursor of the next page."""
        query: dict[str, Any] = {}
        if state:
            query["state"] = state
        if limit is not None:
            query["limit"] = limit
        if before is not None:
            query["before"] = before
        body = self.request("GET", "/jobs", query).json()
        if not isinstance(body, dict) or not isinstance(body.get("jobs"), list):
            raise ClientError('the server\'s job list is not {"jobs": [...]}')
        jobs: list[dict[str, Any]] = body["jobs"]
        following = body.get("next")
        if following is not None and not isinstance(following, str):
            raise ClientError('the server\'s "next" cursor is not a job id')
        return jobs, following


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _enable_keepalive(sock: socket.socket) -> None:
    """Notice a vanished server within about a minute on an idle stream."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _error_text(raw: bytes) -> str | None:
    """The ``error`` field of a JSON error body, or None (HTML, empty, junk)."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return _one_line(body["error"])
    return None


def _job_json(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise ClientError("the server's answer is not a job")
    return body


def job_code(job: Mapping[str, Any]) -> int | None:
    """The job's exit code as an exit status for us, or None while it runs."""
    code = job.get("code")
    if code is None:
        return None
    if isinstance(code, bool) or not isinstance(code, int):
        raise ClientError(f"the server sent a job code that is not an integer: {code!r}")
    if job.get("state") == "lost":
        # Its real exit status is unknown (code -1): a code of its own, so a
        # script can tell "lost in a crash, maybe run it again" from failed.
        return EXIT_LOST
    # The daemon reports 0-255 (128 + n for signals); anything else cannot
    # be an exit status, so it is reported as a plain failure.
    return code if 0 <= code <= 255 else 1


# -- terminal ----------------------------------------------------------------


class Console:
    """Our stdout and stderr, shared by the stream threads, plus the progress line.

    One lock serialises every write so output and the progress line never
    interleave; the progress line is cleared before any output is written
    and is only drawn when stderr is a terminal and the last byte written
    ended a line (so it never overwrites a job's own ``\\r`` progress).
    """

    def __init__(self, out: BinaryIO, err: BinaryIO, progress: bool) -> None:
        self.out = out
        self.err = err
        self.progress_enabled = progress
        self._lock = threading.Lock()
        self._progress_shown = False
        self._at_line_start = True
        self.last_output = time.monotonic()

    def write(self, stream: str, data: bytes) -> None:
        target = self.out if stream == "stdout" else self.err
        with self._lock:
            self._clear_locked()
            try:
                target.write(data)
                target.flush()
            except BrokenPipeError:
                # Told apart from a broken connection to the server, which
                # is also an OSError: this one ends the client.
                raise OutputClosed(stream) from None
            self.last_output = time.monotonic()
            self._at_line_start = data.endswith(b"\n")

    def message(self, text: str) -> None:
        """A diagnostic line of the client's own on stderr."""
        with self._lock:
            self._clear_locked()
            self.err.write(f"{PROG}: {text}\n".encode("utf-8", "replace"))
            self.err.flush()
            self._at_line_start = True

    def progress(self, text: str) -> None:
        if not self.progress_enabled:
            return
        with self._lock:
            if not self._at_line_start or time.monotonic() - self.last_output < PROGRESS_IDLE:
                return
            self.err.write(b"\r" + text.encode("utf-8", "replace") + b"\x1b[K")
            self.err.flush()
            self._progress_shown = True

    def clear(self) -> None:
        with self._lock:
            self._clear_locked()

    def _clear_locked(self) -> None:
        if self._progress_shown:
            self.err.write(b"\r\x1b[K")
            self.err.flush()
            self._progress_shown = False


def progress_text(job_id: str, state: str, elapsed: float) -> str:
    minutes, seconds = divmod(int(elapsed), 60)
    hours, minutes = divmod(minutes, 60)
    clock = f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
    return f"[{PROG}] job {job_id[:12]} {state} {clock}"


# -- following output --------------------------------------------------------


class StreamReader(threading.Thread):
    """Copy one output stream of a job (``stdout`` or ``stderr``) to the console.

    With ``follow`` the server keeps the response open until the job ends.
    If the connection breaks, the reader reconnects with
    ``?offset=<bytes written so far>`` and trusts the ``X-Output-Offset``
    header for where the new response really starts: bytes it already wrote
    are skipped, bytes the server no longer retains are reported as a gap.
    So nothing is duplicated, and nothing is lost that the server still has.
    """

    def __init__(
        self,
        server: Server,
        job_id: str,
        stream: str,
        console: Console,
        follow: bool = True,
        target: str | None = None,
        reconnect_for: float | None = None,
    ) -> None:
        super().__init__(name=f"{PROG}-{stream}", daemon=True)
        self.server = server
        self.job_id = job_id
        self.stream = stream
        self.console = console
        self.follow = follow
        #: which of our streams receives the bytes (``logs --stderr`` -> stdout)
        self.target = target or stream
        self.reconnect_for = RECONNECT_FOR if reconnect_for is None else reconnect_for
        #: bytes of the job's stream accounted for: written, or reported dropped
        self.offset = 0
        self.error: ClientError | None = None
        self.broken_pipe = False
        #: set when the reader has finished for any reason
        self.done = threading.Event()
        self._stopping = False
        self._conn: http.client.HTTPConnection | None = None

    def run(self) -> None:
        try:
            self._copy()
        except ClientError as exc:
            self.error = exc
        except OutputClosed:
            self.broken_pipe = True
        except Exception as exc:  # never a traceback from a thread
            self.error = ClientError(f"reading {self.stream} failed: {exc!r}")
        finally:
            self.done.set()

    def stop(self) -> None:
        """Abandon the stream (shutting the socket unblocks a pending read)."""
        self._stopping = True
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _copy(self) -> None:
        failing_since: float | None = None
        delay = 0.1
        while not self._stopping:
            query: dict[str, Any] = {"offset": self.offset}
            if self.follow:
                query["follow"] = 1
            try:
                clean, received = self._one_response(query)
                failure: ConnectionFailed | None = None
            except ConnectionFailed as exc:
                clean, received, failure = False, 0, exc
            if self._stopping:
                return
            if received:
                failing_since, delay = None, 0.1
            elif not clean:
                # Refused, or broken before a single byte: back off, and
                # give up once the server has been unusable for too long.
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self.reconnect_for:
                    raise failure or ConnectionFailed(f"the {self.stream} stream keeps breaking")
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            if not clean:
                continue  # resume at self.offset
            if not self.follow or self._finished(received):
                return
            if not received:
                # The server ended a follow stream early and sent nothing:
                # do not spin on it.
                time.sleep(0.5)

    def _finished(self, received: int) -> bool:
        """After a clean end of a follow stream: has the job really ended?"""
        try:
            job = self.server.job(self.job_id)
        except ConnectionFailed:
            return False  # reconnect (and give up after reconnect_for)
        if job_code(job) is None:
            return False
        total = job.get(f"{self.stream}_bytes")
        if isinstance(total, int) and self.offset < total and received:
            return False  # fetch the rest (a second empty answer ends it)
        return True

    def _one_response(self, query: dict[str, Any]) -> tuple[bool, int]:
        """Copy one response; return (ended cleanly, bytes received)."""
        conn, response = self.server.open("GET", f"/{self.job_id}/{self.stream}", query, timeout=None)
        self._conn = conn
        received = 0
        try:
            start = _header_int(response.getheader("X-Output-Offset"), self.offset)
            skip = 0
            if start > self.offset:
                self.console.message(
                    f"{start - self.offset} bytes of the job's {self.stream} are no longer "
                    "retained by the server and were skipped"
                )
                self.offset = start
            elif start < self.offset:
                skip = self.offset - start
            while True:
                data = response.read1(READ_SIZE)
                if not data:
                    break
                received += len(data)
                if skip:
                    cut = min(skip, len(data))
                    skip -= cut
                    data = data[cut:]
                    if not data:
                        continue
                if self._stopping:
                    return False, received
                self.console.write(self.target, data)
                self.offset += len(data)
            # A Content-Length response cut short reads as a quiet EOF.
            clean = not response.length
            return clean, received
        except (OSError, http.client.HTTPException):
            return False, received
        finally:
            self._conn = None
            conn.close()


def _header_int(value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        number = int(value.strip())
    except ValueError:
        return default
    return number if number >= 0 else default


# -- commands ----------------------------------------------------------------


class Context(NamedTuple):
    """What every command needs."""

    server: Server
    console: Console
    out: BinaryIO
    stdout_tty: bool


_T = TypeVar("_T")


def _retrying(call: Callable[[], _T], budget: float | None = None) -> _T:
    """Call, retrying connection failures for ``budget`` seconds."""
    budget = RECONNECT_FOR if budget is None else budget
    started = time.monotonic()
    delay = 0.1
    while True:
        try:
            return call()
        except ConnectionFailed:
            if time.monotonic() - started > budget:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def wait_for_code(
    ctx: Context,
    job_id: str,
    timeout: float | None = None,
    started: float | None = None,
    state: str = "running",
) -> tuple[int, dict[str, Any]]:
    """Long-poll ``GET /<id>?wait=S`` until the job has a code."""
    started = time.monotonic() if started is None else started
    deadline = None if timeout is None else time.monotonic() + timeout
    # On a terminal the progress line wants a redraw every second; elsewhere
    # long polls keep the request count low.
    poll = PROGRESS_TICK if ctx.console.progress_enabled else LONG_POLL
    while True:
        wait = poll
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        job = _retrying(functools.partial(ctx.server.job, job_id, wait=wait))
        code = job_code(job)
        if code is not None:
            ctx.console.clear()
            return code, job
        state = str(job.get("state") or state)
        ctx.console.progress(progress_text(job_id, state, time.monotonic() - started))
        if deadline is not None and time.monotonic() >= deadline:
            ctx.console.clear()
            raise ClientError(f"job {job_id} is still {state} after {_seconds(timeout or 0)} s", EXIT_WAIT_TIMEOUT)


def build_payload(args: argparse.Namespace) -> dict[str, Any]:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("no command given (usage: ... run [options] -- COMMAND [ARG...])")
    for word in argv:
        _check_text(word, "the command line")
    payload: dict[str, Any] = {"command": argv[0], "args": argv[1:]}
    if args.timeout is not None:
        payload["timeout"] = args.timeout
    if args.callback is not None:
        payload["callback"] = args.callback
    if args.env:
        env: dict[str, str] = {}
        for item in args.env:
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise UsageError(f"--env wants NAME=VALUE, not {item!r}")
            _check_text(item, "--env")
            env[name] = value
        payload["env"] = env
    if args.stdin_file is not None:
        payload["stdin"] = _read_stdin_file(args.stdin_file)
    return payload


def _check_text(word: str, what: str) -> None:
    # argv words that were not valid UTF-8 arrive as lone surrogates, which
    # JSON cannot carry to the server; NUL can never be in an argv word.
    try:
        word.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what} contains bytes that are not UTF-8: {word!r}") from None
    if "\0" in word:
        raise UsageError(f"{what} contains a NUL character")


def _read_stdin_file(path: str) -> str:
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as handle:
                data = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read --stdin-file {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        # The API carries stdin as a JSON string.
        raise UsageError(f"--stdin-file {path} is not UTF-8 text (the API cannot carry binary stdin)") from None


def _report_job_end(ctx: Context, job: Mapping[str, Any]) -> None:
    """One stderr line when the job did not simply exit by itself."""
    err = job.get("err")
    if isinstance(err, dict):
        what = err.get("message") or err.get("code") or "?"
        ctx.console.message(f"job {job.get('id')} {job.get('state', 'ended')}: {_one_line(str(what))}")


def cmd_run(ctx: Context, args: argparse.Namespace) -> int:
    payload = build_payload(args)
    started = time.monotonic()
    job = ctx.server.submit(payload)
    job_id = job["id"]
    readers = [StreamReader(ctx.server, job_id, name, ctx.console) for name in ("stdout", "stderr")]
    state = str(job.get("state") or "queued")
    restore = _install_signal_handlers()
    try:
        for reader in readers:
            reader.start()
        last_refresh = time.monotonic()
        while not all(reader.done.is_set() for reader in readers):
            pending = next(reader for reader in readers if not reader.done.is_set())
            pending.done.wait(PROGRESS_TICK)
            if any(reader.broken_pipe or reader.error for reader in readers):
                break
            if ctx.console.progress_enabled:
                now = time.monotonic()
                if now - last_refresh >= PROGRESS_REFRESH and now - ctx.console.last_output >= PROGRESS_IDLE:
                    last_refresh = now
                    try:
                        state = str(ctx.server.job(job_id).get("state") or state)
                    except ClientError:
                        pass
                ctx.console.progress(progress_text(job_id, state, now - started))
        if any(reader.broken_pipe for reader in readers):
            # Like a local program writing into a closed pipe: it dies.
            _stop_readers(readers)
            _cancel_quietly(ctx, job_id)
            return 128 + signal.SIGPIPE
        for reader in readers:
            if reader.error is not None:
                _stop_readers(readers)
                raise ClientError(
                    f"{reader.error.message}; job {job_id} may still be running (see: {PROG} wait {job_id})",
                    reader.error.exit_code,
                )
        code, final = wait_for_code(ctx, job_id, started=started, state=state)
        _report_job_end(ctx, final)
        return code
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        _stop_readers(readers)
        ctx.console.clear()
        try:
            _cancel_quietly(ctx, job_id, announce=True)
        except (KeyboardInterrupt, Interrupted):
            pass  # a second Ctrl-C: leave now
        return 128 + signum
    finally:
        restore()


def _stop_readers(readers: Sequence[StreamReader]) -> None:
    for reader in readers:
        reader.stop()
    for reader in readers:
        if reader.is_alive():
            reader.join(2.0)


def _cancel_quietly(ctx: Context, job_id: str, announce: bool = False) -> None:
    try:
        ctx.server.cancel(job_id)
    except ClientError as exc:
        ctx.console.message(f"could not cancel job {job_id}: {exc.message}")
        return
    if announce:
        ctx.console.message(f"canceled job {job_id}")


def _install_signal_handlers() -> Callable[[], None]:
    """SIGTERM and SIGHUP cancel the job like Ctrl-C (the terminal closed,
    or a supervisor stopped us); only possible in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupted(signum: int, frame: object) -> NoReturn:
        raise Interrupted(signum)

    previous = {signum: signal.signal(signum, interrupted) for signum in (signal.SIGTERM, signal.SIGHUP)}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    return restore


def cmd_submit(ctx: Context, args: argparse.Namespace) -> int:
    job = ctx.server.submit(build_payload(args))
    ctx.out.write(job["id"].encode("ascii", "replace") + b"\n")
    ctx.out.flush()
    return EXIT_OK


def _human(args: argparse.Namespace, ctx: Context) -> bool:
    if args.json:
        return False
    if args.summary:
        return True
    return ctx.stdout_tty


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    job = ctx.server.job(args.job_id)
    if _human(args, ctx):
        text = format_summary(job)
    else:
        text = json.dumps(job, ensure_ascii=False) + "\n"
    ctx.out.write(text.encode("utf-8", "replace"))
    ctx.out.flush()
    return EXIT_OK


def command_line(job: Mapping[str, Any]) -> str:
    """The job's argv quoted as a shell would need it (copy-pastable)."""
    arguments = job.get("arguments")
    words = [job.get("command") or ""] + (arguments if isinstance(arguments, list) else [])
    return shlex.join(str(word) for word in words)


def format_summary(job: Mapping[str, Any]) -> str:
    """The readable form of ``status``: one ``name: value`` line per fact."""

    def shown(value: Any) -> str:
        return "-" if value is None else _one_line(str(value), 200)

    command = command_line(job)
    code = job.get("code")
    state = shown(job.get("state"))
    if code is not None:
        state += f" (code {code}"
        if job.get("signal"):
            state += f", {job['signal']}"
        state += ")"
    lines = [
        ("id", shown(job.get("id"))),
        ("command", _one_line(command, 200)),
        ("state", state),
        ("pid", shown(job.get("pid"))),
        ("created", shown(job.get("created_at"))),
        ("started", shown(job.get("started_at"))),
        ("finished", shown(job.get("finished_at"))),
    ]
    if job.get("duration") is not None:
        lines.append(("duration", f"{job['duration']} s"))
    if job.get("timeout") is not None:
        lines.append(("timeout", f"{job['timeout']} s"))
    for stream in ("stdout", "stderr"):
        if f"{stream}_bytes" in job:
            value = f"{job.get(stream + '_bytes')} bytes"
            if job.get(f"{stream}_dropped"):
                value += f" ({job[stream + '_dropped']} dropped)"
            lines.append((stream, value))
    err = job.get("err")
    if isinstance(err, dict):
        lines.append(("error", f"{shown(err.get('code'))}: {shown(err.get('message'))}"))
    if job.get("callback"):
        value = shown(job["callback"])
        delivery = job.get("callback_delivery")
        if isinstance(delivery, dict):
            value += f" ({shown(delivery.get('state'))}, {shown(delivery.get('attempts'))} attempts)"
        lines.append(("callback", value))
    return "".join(f"{name + ':':<10}{value}\n" for name, value in lines)


def cmd_wait(ctx: Context, args: argparse.Namespace) -> int:
    try:
        code, _ = wait_for_code(ctx, args.job_id, timeout=args.timeout, state="waiting")
    except KeyboardInterrupt:
        ctx.console.clear()
        return EXIT_INTERRUPTED
    return code


def cmd_logs(ctx: Context, args: argparse.Namespace) -> int:
    stream = "stderr" if args.stderr else "stdout"
    # The chosen stream goes to our stdout so it can be piped.
    reader = StreamReader(ctx.server, args.job_id, stream, ctx.console, follow=args.follow, target="stdout")
    reader.start()
    try:
        while not reader.done.wait(0.5):
            pass
    except KeyboardInterrupt:
        _stop_readers([reader])
        return EXIT_INTERRUPTED
    if reader.broken_pipe:
        return 128 + signal.SIGPIPE
    if reader.error is not None:
        raise reader.error
    return EXIT_OK


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    response = ctx.server.cancel(args.job_id)
    if response.status == 200:
        try:
            state = _job_json(response.json()).get("state", "finished")
        except ClientError:
            state = "finished"
        ctx.console.message(f"job {args.job_id} had already ended ({state})")
    return EXIT_OK


#: the most jobs one ``GET /jobs`` page may hold (the server's ceiling)
LIST_PAGE_MAX = 1000


def list_jobs(
    server: Server, state: str | None, limit: int | None, before: str | None, everything: bool
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first: ``limit`` jobs (or every job), page after page.

    Follows the server's ``next`` cursor until enough jobs arrived or there
    are no more; returns them and the cursor that continues the listing
    (``list --before``), None at its end.  Without ``limit`` and
    ``everything``, one page of the server's default size.
    """
    if limit is None and not everything:
        return server.jobs(state, None, before)
    found: list[dict[str, Any]] = []
    cursor = before
    while True:
        wanted = LIST_PAGE_MAX if limit is None else min(limit - len(found), LIST_PAGE_MAX)
        page, cursor = server.jobs(state, wanted, cursor)
        found.extend(page)
        if cursor is None or not page or (limit is not None and len(found) >= limit):
            return found, cursor


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    jobs, following = list_jobs(ctx.server, args.state, args.limit, args.before, args.all)
    if _human(args, ctx):
        rows = [("ID", "STATE", "CODE", "CREATED", "COMMAND")]
        for job in jobs:
            command = command_line(job)
            code = job.get("code")
            rows.append(
                (
                    str(job.get("id", "")),
                    str(job.get("state", "")),
                    "-" if code is None else str(code),
                    str(job.get("created_at") or "-"),
                    _one_line(command, 80),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        text = "".join(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4] + "\n"
            for row in rows
        )
        if following is not None:
            ctx.console.message(f"more jobs: list --before {following}")
    else:
        text = json.dumps({"jobs": jobs, "next": following}, ensure_ascii=False) + "\n"
    ctx.out.write(text.encode("utf-8", "replace"))
    ctx.out.flush()
    return EXIT_OK


# -- command line ------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors with our exit code, not 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0: {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _job_id(text: str) -> str:
    job_id = text.strip().lower()
    # Ids are 40 hex digits; checking here keeps anything else (a path, a
    # query) out of the request line.
    if len(job_id) != 40 or not set(job_id) <= JOB_ID_CHARS:
        raise argparse.ArgumentTypeError(f"not a job id (40 hex digits): {text!r}")
    return job_id


def build_parser() -> argparse.ArgumentParser:
    connection = _Parser(add_help=False)
    group = connection.add_argument_group("server")
    # SUPPRESS: the options may be given before or after the subcommand,
    # and a default in the subparser must not overwrite one given before.
    group.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"the daemon's base URL, or unix:SOCKET_PATH (env HTTPRUNNER_URL; default {DEFAULT_URL})",
    )
    group.add_argument(
        "--no-retry",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"do not retry a 503 (busy) answer; by default it is retried after its Retry-After, "
        f"at most {BUSY_RETRIES} times within {BUSY_RETRY_FOR:g} s",
    )
    group.add_argument(
        "--token-file",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="file holding the bearer token, first non-comment line (default: env HTTPRUNNER_TOKEN)",
    )

    parser = _Parser(
        prog=PROG,
        parents=[connection],
        description="Run commands on an httprunner daemon.",
        epilog="Client exit codes: 200 usage, 201 connection, 202 HTTP error, 203 401/403, "
        "204 404, 205 503 busy, 206 wait timed out, 207 job lost in a crash, 130 interrupted;"
        " otherwise the job's code.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command_name", metavar="COMMAND", parser_class=_Parser)

    def job_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--timeout", type=_positive_float, metavar="S", help="kill the job after S seconds")
        sub.add_argument("--callback", metavar="URL", help="URL the daemon POSTs the finished job to")
        sub.add_argument(
            "--env", action="append", default=[], metavar="NAME=VALUE", help="job environment (repeatable)"
        )
        sub.add_argument(
            "--stdin-file", metavar="F", help="send the UTF-8 text of F (- for our stdin) as the job's stdin"
        )
        sub.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")

    run = commands.add_parser(
        "run",
        parents=[connection],
        help="run a command, stream its output, exit with its code",
        description="Submit the command, stream its stdout/stderr live, exit with its exit code. "
        "Ctrl-C (or SIGTERM/SIGHUP) cancels the remote job.",
    )
    job_options(run)
    run.set_defaults(handler=cmd_run)

    submit = commands.add_parser("submit", parents=[connection], help="submit a command, print the job id")
    job_options(submit)
    submit.set_defaults(handler=cmd_submit)

    def output_format(sub: argparse.ArgumentParser) -> None:
        fmt = sub.add_mutually_exclusive_group()
        fmt.add_argument("--json", action="store_true", help="print JSON (default when stdout is not a terminal)")
        fmt.add_argument("--summary", action="store_true", help="print for humans (default on a terminal)")

    status = commands.add_parser("status", parents=[connection], help="show a job")
    status.add_argument("job_id", type=_job_id, metavar="ID")
    output_format(status)
    status.set_defaults(handler=cmd_status)

    wait = commands.add_parser("wait", parents=[connection], help="wait for a job, exit with its code")
    wait.add_argument("job_id", type=_job_id, metavar="ID")
    wait.add_argument("--timeout", type=_positive_float, metavar="S", help="give up after S seconds (exit 206)")
    wait.set_defaults(handler=cmd_wait)

    logs = commands.add_parser("logs", parents=[connection], help="print a job's stdout (or stderr)")
    logs.add_argument("job_id", type=_job_id, metavar="ID")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--stderr", action="store_true", help="the job's stderr instead (printed on stdout)")
    logs.set_defaults(handler=cmd_logs)

    cancel = commands.add_parser("cancel", parents=[connection], help="cancel a job")
    cancel.add_argument("job_id", type=_job_id, metavar="ID")
    cancel.set_defaults(handler=cmd_cancel)

    jobs = commands.add_parser("list", parents=[connection], help="list jobs, newest first")
    jobs.add_argument("--state", metavar="S", help="only jobs in state S (queued, running, succeeded, ...)")
    how_many = jobs.add_mutually_exclusive_group()
    how_many.add_argument(
        "--limit", type=_positive_int, metavar="N", help="at most N jobs, fetched page by page (default: 100)"
    )
    how_many.add_argument("--all", action="store_true", help="every job the server keeps, page by page")
    jobs.add_argument(
        "--before", type=_job_id, metavar="ID", help="only jobs submitted before job ID (continues a listing)"
    )
    output_format(jobs)
    jobs.set_defaults(handler=cmd_list)
    return parser


def read_token(path: str) -> str:
    """The first token of a token file (same format as the daemon's)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise UsageError(f"cannot read --token-file {path}: {why}") from None
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise UsageError(f"--token-file {path} holds no token")


def run_cli(
    argv: Sequence[str] | None = None,
    *,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
    environ: Mapping[str, str] | None = None,
    stdout_tty: bool | None = None,
    stderr_tty: bool | None = None,
) -> int:
    """Run the client; return the exit status.  Streams are binary."""
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr.buffer
    env = os.environ if environ is None else environ
    if stdout_tty is None:
        stdout_tty = _isatty(out)
    if stderr_tty is None:
        stderr_tty = _isatty(err)
    console = Console(out, err, progress=stderr_tty)
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "handler", None):
            raise UsageError(f"no command given (see {PROG} --help)")
        token_file = getattr(args, "token_file", None)
        token = read_token(token_file) if token_file else (env.get("HTTPRUNNER_TOKEN") or "").strip() or None
        server = Server(
            getattr(args, "url", None) or env.get("HTTPRUNNER_URL") or DEFAULT_URL,
            token,
            retry_busy=not getattr(args, "no_retry", False),
            notify=console.message,
        )
        ctx = Context(server=server, console=console, out=out, stdout_tty=stdout_tty)
        return int(args.handler(ctx, args))
    except ClientError as exc:
        console.message(f"error: {exc.message}")
        return exc.exit_code
    except KeyboardInterrupt:
        console.clear()
        return EXIT_INTERRUPTED
    except (BrokenPipeError, OutputClosed):
        return 128 + signal.SIGPIPE
    except Exception as exc:
        # A bug of ours: still one line, never a traceback (the promise to
        # scripts reading our stderr), and an exit code of the client.
        console.message(f"error: unexpected failure (a bug, please report it): {exc!r}")
        return EXIT_HTTP


def _isatty(stream: BinaryIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point (``httprunner-client``)."""
    status = run_cli(argv)  # --help and --version raise SystemExit(0) themselves
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain when flushing at exit; point stdout at
        # /dev/null so it does not (see the signal module's docs on SIGPIPE).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        status = 128 + signal.SIGPIPE
    sys.exit(status)


if __name__ == "__main__":
    main()
