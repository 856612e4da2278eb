"""Raw baselines measured in the same run as the daemon.

- :func:`spawn_loop`: a bare ``os.posix_spawn`` + pipe loop (spawn, read
  stdout to EOF, ``waitpid``) with ``in_flight`` children at once: the
  fastest a Python program on this machine can run short commands.
- ``python baselines.py klein``: a bare Klein route on loopback (no guard,
  no store, no runner) that answers ``GET /<id>`` and ``POST /`` with a
  job-sized JSON body, like the daemon's answers; it prints its port.
"""

from __future__ import annotations

import os
import selectors
import shutil
import sys
import time

#: a finished ``echo foo`` job as the daemon shows it, so bodies are alike
JOB_JSON = (
    b'{"stderr":"","stdout":"foo\\n","id":"c4e603b3ec9423c3e6411c404ab95b51ca4ab4c2","code":0,'
    b'"command":"echo","arguments":["foo"],"err":null,"state":"succeeded","signal":null,"pid":7622,'
    b'"created_at":"2026-11-27T23:19:31.170Z","started_at":"2026-11-27T23:19:31.177Z",'
    b'"finished_at":"2026-11-27T23:19:31.179Z","duration":0.008995,"timeout":null,"stdout_bytes":4,'
    b'"stderr_bytes":0,"stdout_dropped":0,"stderr_dropped":0}'
)


def spawn_loop(total: int, in_flight: int, argv: list[str] | None = None, duration: float = 60.0) -> dict[str, float]:
    """Run ``argv`` (default ``echo foo``) ``total`` times, ``in_flight`` at once.

    Stops early after ``duration`` seconds; returns jobs/s over what ran.
    """
    argv = argv or [shutil.which("echo") or "/bin/echo", "foo"]
    env = {"PATH": os.environ.get("PATH", os.defpath)}
    sel = selectors.DefaultSelector()
    started = time.perf_counter()
    deadline = started + duration
    launched = done = 0
    while done < launched or (launched < total and time.perf_counter() < deadline):
        while launched - done < in_flight and launched < total and time.perf_counter() < deadline:
            r, w = os.pipe()
            pid = os.posix_spawn(
                argv[0],
                argv,
                env,
                file_actions=[(os.POSIX_SPAWN_DUP2, w, 1), (os.POSIX_SPAWN_CLOSE, r), (os.POSIX_SPAWN_CLOSE, w)],
            )
            os.close(w)
            sel.register(r, selectors.EVENT_READ, pid)
            launched += 1
        for key, _ in sel.select(timeout=5):
            if not os.read(key.fd, 65536):
                sel.unregister(key.fd)
                os.close(key.fd)
                os.waitpid(key.data, 0)
                done += 1
    sel.close()
    elapsed = time.perf_counter() - started
    return {"jobs": done, "jobs_per_s": done / elapsed if elapsed > 0 else 0.0}


def serve_klein() -> None:
    """Serve the bare Klein route on a free loopback port; print the port."""
    import json

    from klein import Klein
    from twisted.internet import endpoints, reactor
    from twisted.web.server import Site

    app = Klein()

    def answer(request, status: int) -> bytes:  # type: ignore[no-untyped-def]
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(JOB_JSON))
        return JOB_JSON

    @app.route("/<job_id>", methods=["GET"])
    def get_job(request, job_id):  # type: ignore[no-untyped-def]
        return answer(request, 200)

    @app.route("/", methods=["POST"])
    def submit(request):  # type: ignore[no-untyped-def]
        json.loads(request.content.read())
        return answer(request, 202)

    site = Site(app.resource())
    site.noisy = False

    def listening(port) -> None:  # type: ignore[no-untyped-def]
        print(port.getHost().port, flush=True)

    endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site).addCallback(listening)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    if sys.argv[1:] == ["klein"]:
        serve_klein()
    else:
        print(spawn_loop(2000, int(sys.argv[1]) if sys.argv[1:] else 1))
