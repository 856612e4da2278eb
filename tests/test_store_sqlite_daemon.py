"""The SQLite store end to end: a real ``twistd`` child on a real file.

Every fault is produced for real: the daemon is stopped with SIGTERM and
killed with SIGKILL mid-work and started again on the same file, callbacks
go to a receiver on loopback that is down and then up, the file is
replaced by garbage, a newer schema or someone else's database, a second
daemon opens it, the disk it lives on fills up (a small tmpfs), and the
bytes of the file itself are searched for a job's secrets.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import http.client
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from httprunner.store.sqlite import RECENT_JOBS

from .conftest import TIMEOUT, Daemon, alive, child_env, twistd_command

#: short grace periods keep the tests fast (TERM, then KILL after this)
FAST = ("--kill-grace", "0.5")


def poll(check: Callable[[], Any], seconds: float = TIMEOUT, what: str = "condition") -> Any:
    """Call ``check`` until it returns something true (bounded); return it."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % what)
        time.sleep(0.02)


def sqlite_daemon(start_daemon: Callable[..., Daemon], db: Path, *options: str) -> Daemon:
    return start_daemon("--store", "sqlite:%s" % db, *FAST, *options)


def kill9(daemon: Daemon) -> None:
    """SIGKILL: the daemon dies without ending anything."""
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(TIMEOUT)


def get(daemon: Daemon, job_id: str) -> dict[str, Any]:
    status, job = daemon.api("GET", "/" + job_id)
    assert status == 200, job
    return job


def raw(daemon: Daemon, job_id: str) -> bytes:
    status, _, body = daemon.request("GET", "/" + job_id)
    assert status == 200, body
    return body


def recorded(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """What the file holds now, read as an operator would (read-only)."""
    connection = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
    try:
        return connection.execute(sql, args).fetchall()
    finally:
        connection.close()


def stored_state(db: Path, job_id: str) -> str | None:
    rows = recorded(db, "SELECT state FROM jobs WHERE id = ?", job_id)
    return rows[0][0] if rows else None


def wait_until_recorded_running(db: Path, *job_ids: str) -> None:
    """The start of a job (its pid and process identity) is written a moment
    after the spawn; a crash before that would leave nothing to kill."""

    def started() -> bool:
        rows = recorded(
            db,
            "SELECT count(*) FROM jobs WHERE state = 'running' AND pid IS NOT NULL AND proc_start IS NOT NULL"
            " AND id IN (%s)" % ",".join("?" * len(job_ids)),
            *job_ids,
        )
        return rows[0][0] == len(job_ids)

    poll(started, what="the starts to be recorded")


def refusal(tmp_path: Path, db: Path, *options: str) -> tuple[int, str]:
    """Start a daemon that must refuse: (exit status, its whole output)."""
    result = subprocess.run(
        twistd_command("--allow-root", "--listen", "tcp:0:interface=127.0.0.1", "--store", "sqlite:%s" % db, *options),
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        timeout=TIMEOUT,
    )
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


def assert_one_line_refusal(status: int, output: str, *fragments: str) -> None:
    assert status != 0, output
    assert "Traceback" not in output, output
    last = output.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, output


# -- SIGTERM and SIGKILL mid-work -------------------------------------------------


def test_sigterm_keeps_history_and_the_queue_and_cancels_the_running_job(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    db = tmp_path / "jobs.sqlite3"
    options = ("--max-running", "1", "--max-output", "100", "--allow-env", "GREETING")
    daemon = sqlite_daemon(start_daemon, db, *options)
    done = daemon.wait(daemon.submit("echo", "before the restart", "✓")["id"])
    history = raw(daemon, done["id"])
    running = daemon.submit("sleep", "60")
    queued = [
        daemon.submit("seq", "1000"),  # more than --max-output: the middle is dropped
        daemon.submit("sh", "-c", 'echo "$GREETING"; cat', env={"GREETING": "hello from the queue"}, stdin="fed\n"),
        daemon.submit("echo", "third"),
    ]
    assert [j["state"] for j in queued] == ["queued"] * 3
    assert daemon.stop() == 0

    daemon = sqlite_daemon(start_daemon, db, *options)
    assert raw(daemon, done["id"]) == history
    stopped = get(daemon, running["id"])
    assert stopped["state"] == "canceled" and stopped["err"]["code"] == "CANCELED"
    assert "shut down" in stopped["err"]["message"] and stopped["signal"] == "SIGTERM"
    ran = [daemon.wait(j["id"]) for j in queued]
    assert [j["state"] for j in ran] == ["succeeded"] * 3
    starts = [j["started_at"] for j in ran]
    assert starts == sorted(starts), "queued jobs must run in their original order"
    assert ran[0]["stdout_bytes"] == 3893 and ran[0]["stdout_dropped"] == 3793
    assert "[... 3793 bytes dropped ...]" in ran[0]["stdout"]
    assert ran[1]["stdout"] == "hello from the queue\nfed\n"  # env and stdin kept for the run
    # the output as the store keeps it: an offset in the dropped middle
    # resumes at the first retained byte after it
    written = "".join("%d\n" % i for i in range(1, 1001)).encode()
    poll(lambda: stored_state(db, queued[0]["id"]) == "succeeded", what="the result on disk")
    status, headers, body = daemon.request("GET", "/%s/stdout?offset=60" % queued[0]["id"])
    assert (status, headers["X-Output-Offset"], body) == (200, str(len(written) - 50), written[-50:])
    status, headers, body = daemon.request("GET", "/%s/stdout?offset=7" % queued[0]["id"])
    assert (headers["X-Output-Offset"], body) == ("7", written[7:50])
    listed = {j["id"]: j for j in daemon.api("GET", "/jobs")[1]["jobs"]}
    assert listed[queued[0]["id"]]["stdout_dropped"] == 3793
    assert set(listed) == {done["id"], running["id"], *(j["id"] for j in queued)}


def test_a_recovered_queued_job_is_killed_at_the_output_limit(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    db = tmp_path / "jobs.sqlite3"
    options = ("--max-running", "1", "--max-output", "1K", "--on-output-limit", "kill")
    daemon = sqlite_daemon(start_daemon, db, *options)
    daemon.submit("sleep", "60")
    flood = daemon.submit("yes")
    daemon.stop()
    daemon = sqlite_daemon(start_daemon, db, *options)
    ended = daemon.wait(flood["id"])
    assert ended["state"] == "failed" and ended["err"]["code"] == "OUTPUT_LIMIT"


def test_a_queued_job_the_new_policy_refuses_ends_spawn_failed_after_the_restart(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    db = tmp_path / "jobs.sqlite3"
    daemon = sqlite_daemon(start_daemon, db, "--max-running", "1", "--whitelist", "sleep,echo", "--allow-env", "WHO")
    daemon.submit("sleep", "60")
    dropped_command = daemon.submit("echo", "no longer allowed")
    dropped_env = daemon.submit("sleep", "0", env={"WHO": "me"})
    still_fine = daemon.submit("sleep", "0")
    assert daemon.stop() == 0

    daemon = sqlite_daemon(start_daemon, db, "--max-running", "1", "--whitelist", "sleep")
    for job in (dropped_command, dropped_env):
        refused = daemon.wait(job["id"])
        assert (refused["state"], refused["code"], refused["err"]["code"]) == ("spawn_failed", 126, "FORBIDDEN")
        assert "may no longer run after the restart" in refused["err"]["message"]
        assert refused["pid"] is None and refused["started_at"] is None
    assert daemon.wait(still_fine["id"])["state"] == "succeeded"


GRANDCHILD_IGNORING_TERM = """\
trap '' TERM
sleep 300 &
echo "$!"
wait
"""


def test_sigkill_running_jobs_become_lost_their_processes_die_and_the_queue_runs(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    db = tmp_path / "jobs.sqlite3"
    script = tmp_path / "stubborn.sh"
    script.write_text(GRANDCHILD_IGNORING_TERM)
    daemon = sqlite_daemon(start_daemon, db, "--max-running", "2")
    stubborn = daemon.submit("sh", str(script))
    plain = daemon.submit("sleep", "300")
    queued = [daemon.submit("echo", "after", str(i)) for i in range(3)]
    # a 202 is sent once the job is committed: it is in the file already
    assert [stored_state(db, j["id"]) for j in (plain, *queued)] == ["running", "queued", "queued", "queued"]
    grandchild = int(poll(lambda: get(daemon, stubborn["id"])["stdout"].strip(), what="the grandchild's pid"))
    wait_until_recorded_running(db, stubborn["id"], plain["id"])
    before = time.time()
    kill9(daemon)
    pids = [stubborn["pid"], grandchild, plain["pid"]]
    assert all(alive(pid) for pid in pids), "SIGKILL leaves the jobs running unsupervised"

    daemon = sqlite_daemon(start_daemon, db, "--max-running", "2")
    for job in (stubborn, plain):
        lost = get(daemon, job["id"])
        assert (lost["state"], lost["code"], lost["err"]["code"]) == ("lost", -1, "LOST")
        assert lost["finished_at"] is not None and lost["pid"] == job["pid"]
        assert lost["finished_at"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(before)))
    poll(lambda: not any(alive(pid) for pid in pids), what="the lost jobs' process groups to die")
    ran = [daemon.wait(j["id"]) for j in queued]
    assert [j["stdout"] for j in ran] == ["after %d\n" % i for i in range(3)]
    assert [j["started_at"] for j in ran] == sorted(j["started_at"] for j in ran)
    listed = [j["id"] for j in daemon.api("GET", "/jobs?state=lost")[1]["jobs"]]
    assert listed == [plain["id"], stubborn["id"]]
    _, _, metrics = daemon.request("GET", "/metrics")
    assert b'httprunner_jobs_finished_total{state="lost"} 2.0' in metrics


def test_a_crash_does_not_kill_a_process_that_reused_a_lost_jobs_pid(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Only a process provably the same (pid + start time + boot id) is
    signalled: here the recorded start time is changed, as if the pid had
    been reused by an unrelated process after the crash."""
    db = tmp_path / "jobs.sqlite3"
    daemon = sqlite_daemon(start_daemon, db)
    job = daemon.submit("sleep", "300")
    wait_until_recorded_running(db, job["id"])
    kill9(daemon)
    connection = sqlite3.connect(db)
    connection.execute("UPDATE jobs SET proc_start = proc_start + 1 WHERE id = ?", (job["id"],))
    connection.commit()
    connection.close()
    try:
        daemon = sqlite_daemon(start_daemon, db)
        assert get(daemon, job["id"])["state"] == "lost"
        # the restart and its kill grace are over once a new job has run
        daemon.wait(daemon.submit("sleep", "0.7")["id"])
        assert alive(job["pid"]), "a process that is not provably the job's must be left alone"
    finally:
        os.killpg(job["pid"], signal.SIGKILL)


# -- callbacks: the outbox ------------------------------------------------------


class Receiver:
    """A callback receiver on loopback that can be down (503) or up (200)."""

    def __init__(self) -> None:
        self.up = False
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with owner.lock:
                    owner.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = 200 if owner.up else 503
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d/hook" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_job(self, job_id: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(h, b) for h, b in self.received if json.loads(b)["id"] == job_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def check_signature(secret: bytes, headers: dict[str, str], body: bytes) -> None:
    signed = ("%s.%s." % (headers["webhook-id"], headers["webhook-timestamp"])).encode() + body
    expected = "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == expected


def test_pending_and_lost_job_callbacks_are_delivered_after_sigterm_and_sigkill(
    start_daemon: Callable[..., Daemon], tmp_path: Path, receiver: Receiver
) -> None:
    db = tmp_path / "jobs.sqlite3"
    secret = b"outbox-secret"
    (tmp_path / "secret").write_bytes(secret + b"\n")
    options = ("--callback-attempts", "10", "--callback-secret-file", str(tmp_path / "secret"))
    daemon = sqlite_daemon(start_daemon, db, *options)
    job = daemon.submit("echo", "call me back", callback=receiver.url)
    poll(lambda: get(daemon, job["id"])["callback_delivery"]["attempts"] >= 1, what="a first failed attempt")

    # SIGTERM: the delivery is cut short by the shutdown and stays pending
    assert daemon.stop() == 0
    made = len(receiver.for_job(job["id"]))
    assert made >= 1 and stored_state(db, job["id"]) == "succeeded"
    assert recorded(db, "SELECT delivery_state, delivery_attempts FROM jobs WHERE id = ?", job["id"]) == [
        ("pending", made)
    ]

    # the next start resumes it (the receiver is still down), then a SIGKILL
    daemon = sqlite_daemon(start_daemon, db, *options)
    poll(lambda: len(receiver.for_job(job["id"])) > made, what="the resumed attempt")
    poll(lambda: get(daemon, job["id"])["callback_delivery"]["attempts"] > made, what="the attempt to be recorded")
    running = daemon.submit("sleep", "300", callback=receiver.url)
    wait_until_recorded_running(db, running["id"])
    kill9(daemon)
    made = recorded(db, "SELECT delivery_attempts FROM jobs WHERE id = ?", job["id"])[0][0]
    # At least once: an attempt made in the last few milliseconds before the
    # SIGKILL may have reached the receiver without its record reaching disk.
    unrecorded = len(receiver.for_job(job["id"])) - made
    assert unrecorded in (0, 1)

    # the receiver comes back; the next start delivers both
    receiver.up = True
    daemon = sqlite_daemon(start_daemon, db, *options)
    poll(lambda: get(daemon, job["id"])["callback_delivery"]["state"] == "delivered", what="the delivery")
    record = get(daemon, job["id"])["callback_delivery"]
    assert record["attempts"] == made + 1 and record["last_status"] == 200
    sent = receiver.for_job(job["id"])
    assert len(sent) == made + 1 + unrecorded
    assert len({body for _, body in sent}) == 1, "every attempt sends the same bytes, restarts included"
    for headers, body in sent:
        assert headers["webhook-id"] == job["id"]
        check_signature(secret, headers, body)
    first = json.loads(sent[0][1])
    assert (first["state"], first["stdout"], first["callback_delivery"]["attempts"]) == (
        "succeeded",
        "call me back\n",
        0,
    )

    poll(lambda: receiver.for_job(running["id"]), what="the lost job's callback")
    (headers, body), *more = receiver.for_job(running["id"])
    assert more == [] and headers["webhook-id"] == running["id"]
    check_signature(secret, headers, body)
    lost = json.loads(body)
    assert (lost["state"], lost["code"], lost["err"]["code"]) == ("lost", -1, "LOST")
    poll(lambda: get(daemon, running["id"])["callback_delivery"]["state"] == "delivered", what="the record")


# -- refusals -----------------------------------------------------------------------


def test_a_second_daemon_on_the_same_file_refuses_to_start(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    first = sqlite_daemon(start_daemon, db)
    job = first.submit("echo", "first")
    status, output = refusal(tmp_path, db)
    assert_one_line_refusal(status, output, str(db), "another httprunner daemon")
    assert first.wait(first.submit("echo", "still here")["id"])["stdout"] == "still here\n"
    assert first.wait(job["id"])["state"] == "succeeded"


def _our_store(start_daemon: Callable[..., Daemon], db: Path) -> None:
    daemon = sqlite_daemon(start_daemon, db)
    daemon.wait(daemon.submit("echo", "x")["id"])
    assert daemon.stop() == 0


def _files(db: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(db.parent.glob(db.name + "*"))}


def test_a_file_of_garbage_refuses_to_start(tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    db.write_bytes(os.urandom(64 * 1024))
    before = _files(db)
    assert_one_line_refusal(*refusal(tmp_path, db), str(db), "cannot use this file")
    assert _files(db) == before


def test_a_damaged_store_refuses_to_start(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    _our_store(start_daemon, db)
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) >= 3 * page
    data[page + 8 : 2 * page] = os.urandom(page - 8)  # a b-tree page, its header kept
    db.write_bytes(bytes(data))
    status, output = refusal(tmp_path, db)
    assert_one_line_refusal(status, output, str(db))
    assert "damaged" in output or "malformed" in output or "cannot use this file" in output


def test_a_job_row_altered_beyond_reading_refuses_to_start(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    daemon = sqlite_daemon(start_daemon, db, "--max-running", "1")
    daemon.submit("sleep", "60")
    queued = daemon.submit("echo", "waiting")
    assert daemon.stop() == 0
    connection = sqlite3.connect(db)
    connection.execute("UPDATE jobs SET arguments = 'not json' WHERE id = ?", (queued["id"],))
    connection.commit()
    connection.close()
    assert_one_line_refusal(*refusal(tmp_path, db), str(db), "damaged job")


def test_a_newer_schema_refuses_to_start_and_is_left_as_it_is(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    db = tmp_path / "jobs.sqlite3"
    _our_store(start_daemon, db)
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    before = _files(db)
    assert_one_line_refusal(*refusal(tmp_path, db), str(db), "schema version 99", "upgrade httprunner")
    assert _files(db) == before


def test_someone_elses_sqlite_file_refuses_to_start_and_is_left_as_it_is(tmp_path: Path) -> None:
    db = tmp_path / "inventory.db"
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE parts (name TEXT)")
    connection.execute("INSERT INTO parts VALUES ('bolt')")
    connection.commit()
    connection.close()
    before = _files(db)
    assert_one_line_refusal(*refusal(tmp_path, db), str(db), "not an httprunner job store")
    # not even switched to WAL mode: a refusal must not write to the file
    assert _files(db) == before


def test_a_path_that_is_a_directory_refuses_to_start(tmp_path: Path) -> None:
    db = tmp_path / "a-directory"
    db.mkdir()
    assert_one_line_refusal(*refusal(tmp_path, db), str(db), "cannot open the job store")


def checkpointed(daemon: Daemon, db: Path) -> None:
    """Until everything is in the database file itself and the WAL is empty.

    A checkpoint from a connection of the test's own (WAL mode allows it
    beside the daemon); it may find the daemon's writer busy: try again."""
    wal = db.with_name(db.name + "-wal")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        connection = sqlite3.connect(db, timeout=5)
        try:
            busy = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            connection.close()
        if not busy and not wal.stat().st_size:
            return
        time.sleep(0.1)
    raise AssertionError("the WAL was never emptied")


def test_a_store_that_cannot_be_read_answers_503_not_500(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    daemon = sqlite_daemon(start_daemon, db)
    # (never read back through the daemon before the damage: none of their
    # pages is in its reader's cache)
    done = [daemon.submit("seq", "300") for _ in range(20)]
    # The daemon answers its most recently finished jobs from memory: push
    # these out of that cache, so reading them needs the file.
    for _ in range(RECENT_JOBS):
        daemon.submit("true")
    expected = 20 + RECENT_JOBS
    poll(
        lambda: recorded(db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'") == [(expected,)],
        what="the results",
    )
    checkpointed(daemon, db)
    # The disk goes bad under the daemon: every page after the first is noise.
    data = bytearray(db.read_bytes())
    data[4096:] = os.urandom(len(data) - 4096)
    with open(db, "r+b") as f:
        f.write(bytes(data))

    for path in ("/" + done[0]["id"], "/%s/stdout" % done[1]["id"], "/jobs"):
        status, headers, body = daemon.request("GET", path)
        assert status == 503, (path, body)
    status, headers, body = daemon.request("GET", "/jobs")
    error = json.loads(body)
    assert status == 503 and headers["Retry-After"].isdigit()
    assert error["message"] == "Service Unavailable" and "cannot be read" in error["error"]
    assert "Traceback" not in daemon.log_text()


# -- secrets do not stay on disk ------------------------------------------------------


def _in_files(db: Path, needles: list[bytes]) -> list[str]:
    """Which of the database and its WAL hold any of ``needles`` (raw bytes)."""
    found = []
    for path in (db, db.with_name(db.name + "-wal")):
        data = path.read_bytes() if path.exists() else b""
        if any(needle in data for needle in needles):
            found.append(path.name)
    return found


def test_a_jobs_environment_and_stdin_are_gone_from_the_file_once_it_started(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    db = tmp_path / "jobs.sqlite3"
    daemon = sqlite_daemon(start_daemon, db, "--max-running", "1", "--allow-env", "API_TOKEN")
    env_secret = "env-secret-" + secrets.token_hex(16)
    stdin_secret = "stdin-secret-" + secrets.token_hex(16) + "\n"
    # stdin is kept base64-encoded while the job waits: look for both forms
    needles = [env_secret.encode(), stdin_secret.encode(), base64.b64encode(stdin_secret.encode())]
    blocker = daemon.submit("sleep", "60")
    job = daemon.submit("wc", "-c", env={"API_TOKEN": env_secret}, stdin=stdin_secret)
    decoy = daemon.submit("true")
    assert job["state"] == decoy["state"] == "queued"
    assert _in_files(db, needles), "positive control: a waiting job's request is on disk"
    # Canceling the decoy deletes its request, which sets off a checkpoint:
    # the waiting job's request moves from the WAL into the database file
    # itself, where deleting it must zero it.
    assert daemon.api("DELETE", "/" + decoy["id"])[0] == 202
    poll(lambda: "jobs.sqlite3" in _in_files(db, needles), what="the request to reach the database file")
    assert daemon.api("DELETE", "/" + blocker["id"])[0] == 202
    assert daemon.wait(job["id"])["stdout"].strip() == str(len(stdin_secret))
    poll(lambda: not _in_files(db, needles), what="the secrets to leave the database and its WAL")
    # and they stay gone after a restart
    daemon.stop()
    assert not _in_files(db, needles)


def test_secrets_left_in_the_wal_by_a_crash_are_gone_after_the_restart(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    db = tmp_path / "jobs.sqlite3"
    options = ("--allow-env", "API_TOKEN", "--max-running", "1")
    daemon = sqlite_daemon(start_daemon, db, *options)
    secret = ("env-secret-" + secrets.token_hex(16)).encode()
    for _ in range(3):
        # Only a job that waits has its request written: queue it behind a
        # short one.
        daemon.submit("sleep", "0.2")
        job = daemon.submit("sleep", "60", env={"API_TOKEN": secret.decode()})
        assert job["state"] == "queued"
        wait_until_recorded_running(db, job["id"])
        # Killed within the second between the deletion of the request and
        # the checkpoint that follows it: the WAL still holds the secret.
        # (A machine so loaded that the second passed: try again.)
        kill9(daemon)
        left = _in_files(db, [secret])
        daemon = sqlite_daemon(start_daemon, db, *options)  # (it also ends the lost job's process)
        if left:
            break
    assert left == ["jobs.sqlite3-wal"]
    poll(lambda: not _in_files(db, [secret]), what="the secret to leave the WAL")
    assert get(daemon, job["id"])["state"] == "lost"


def test_a_job_that_starts_at_once_never_writes_its_secrets(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    # It is recorded as running before its spawn, so a crash leaves it lost,
    # never queued to run again: its request is not needed on disk at all.
    db = tmp_path / "jobs.sqlite3"
    daemon = sqlite_daemon(start_daemon, db, "--allow-env", "API_TOKEN")
    secret = "env-secret-" + secrets.token_hex(16)
    job = daemon.submit("sleep", "60", env={"API_TOKEN": secret}, stdin=secret)
    assert job["state"] == "running"
    wait_until_recorded_running(db, job["id"])
    assert not _in_files(db, [secret.encode(), base64.b64encode(secret.encode())])
    kill9(daemon)
    assert not _in_files(db, [secret.encode(), base64.b64encode(secret.encode())])


# -- disk full ----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB filesystem (tmpfs), so that ENOSPC is the kernel's own."""
    mountpoint = tmp_path / "small-disk"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): %s" % result.stderr.strip())
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_answers_503_keeps_what_was_accepted_and_recovers_by_itself(
    start_daemon: Callable[..., Daemon], tmp_path: Path, small_disk: Path
) -> None:
    db = small_disk / "jobs.sqlite3"
    go = tmp_path / "go"
    daemon = sqlite_daemon(start_daemon, db, "--max-running", "4")
    kept = daemon.wait(daemon.submit("echo", "accepted before")["id"])
    # a job that writes 300 KB once told to: its result cannot fit later
    big = daemon.submit("sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.02; done; head -c 300000 /dev/zero', str(go))
    waiting = daemon.submit("sleep", "60")
    filler = fill(small_disk)

    answers = []
    for _ in range(200):
        status, headers, body = daemon.request("POST", "/", b'{"command": "echo", "args": ["during"]}')
        answers.append(status)
        if status == 503:
            break
    assert set(answers) <= {202, 503} and answers[-1] == 503, answers
    error = json.loads(body)
    assert error["message"] == "Service Unavailable" and headers["Retry-After"].isdigit()
    assert "could not be recorded" in error["error"] and "full" in error["error"]

    go.touch()
    ended = daemon.wait(big["id"])
    assert ended["state"] == "succeeded" and ended["stdout_bytes"] == 300000
    assert daemon.api("DELETE", "/" + waiting["id"])[0] == 202
    assert stored_state(db, big["id"]) == "running", "the result did not fit on the full disk"

    filler.unlink()
    poll(lambda: daemon.request("POST", "/", b'{"command": "echo", "args": ["after"]}')[0] == 202, what="a 202")
    poll(lambda: stored_state(db, big["id"]) == "succeeded", what="the result to land on disk")
    poll(lambda: stored_state(db, waiting["id"]) == "canceled", what="the cancel to land on disk")
    assert "the store refuses writes: database or disk is full" in daemon.log_text()
    assert "the store takes writes again" in daemon.log_text()

    assert daemon.stop() == 0
    assert recorded(db, "PRAGMA integrity_check") == [("ok",)]
    daemon = sqlite_daemon(start_daemon, db)
    assert get(daemon, kept["id"])["stdout"] == "accepted before\n"
    again = get(daemon, big["id"])
    assert again["state"] == "succeeded" and again["stdout_bytes"] == 300000


def test_stopping_while_the_disk_is_full_does_not_hang(
    start_daemon: Callable[..., Daemon], tmp_path: Path, small_disk: Path
) -> None:
    db = small_disk / "jobs.sqlite3"
    daemon = sqlite_daemon(start_daemon, db)
    big = daemon.submit("sh", "-c", "head -c 300000 /dev/zero; sleep 60")
    poll(lambda: get(daemon, big["id"])["stdout_bytes"] == 300000, what="the output")
    fill(small_disk)
    daemon.proc.send_signal(signal.SIGTERM)
    # the job's result cannot be written: the daemon gives up after a bounded wait
    assert daemon.proc.wait(TIMEOUT) is not None
    assert "could not be recorded before the daemon stopped" in daemon.log_text()


# -- retention and history ------------------------------------------------------------------


def vm_rss(pid: int) -> int:
    """Resident memory of ``pid`` in bytes (``VmRSS``)."""
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %d" % pid)


def run_jobs(daemon: Daemon, count: int, argv: list[str], clients: int = 4) -> list[str]:
    """Submit ``count`` jobs over a few keep-alive connections; wait for all."""
    ids: list[str] = []
    body = json.dumps({"command": argv[0], "args": argv[1:]})

    def client(n: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=TIMEOUT)
        for _ in range(n):
            connection.request("POST", "/", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            assert response.status == 202, answer
            ids.append(json.loads(answer)["id"])
        connection.close()

    threads = [threading.Thread(target=client, args=(count // clients,)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    poll(lambda: daemon.api("GET", "/healthz")[1]["running"] + daemon.api("GET", "/healthz")[1]["queued"] == 0)
    return ids


def test_rss_does_not_grow_with_the_history_kept_on_disk(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    daemon = sqlite_daemon(
        start_daemon, db, "--max-jobs", "10000", "--max-running", "8", "--max-queued", "10000", "--no-access-log"
    )
    # each job writes 8,393 bytes ("seq 1900"), all kept (--max-output 4M)
    argv = ["seq", "1900"]
    first = run_jobs(daemon, 500, argv)
    after_500 = vm_rss(daemon.proc.pid)
    later = run_jobs(daemon, 1500, argv)
    after_2000 = vm_rss(daemon.proc.pid)
    # (the last results are written a moment after the jobs end)
    poll(lambda: recorded(db, "SELECT count(*) FROM jobs WHERE state = 'succeeded'") == [(2000,)], what="2000 jobs")
    assert get(daemon, first[0])["stdout"].endswith("\n1900\n") and get(daemon, later[-1])["stdout_bytes"] == 8393
    # Kept in RAM, the 1,500 later jobs would hold at least their output,
    # 1,500 x 8,393 B = 12.6 MB (the memory store measures ~4.7 KB a job for
    # 3.9 KB of output).  On disk the growth is SQLite's page caches (at
    # most 2 MiB per connection, two connections, already mostly filled by
    # the first 500 jobs) and allocator noise: allow 5 MB, well under half.
    growth = after_2000 - after_500
    assert growth < 5_000_000, "RSS grew %d bytes for 1,500 jobs kept on disk" % growth


def test_max_jobs_and_max_age_apply_across_a_restart(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    daemon = sqlite_daemon(start_daemon, db)
    old = [daemon.wait(daemon.submit("echo", str(i))["id"]) for i in range(5)]
    assert daemon.stop() == 0

    daemon = sqlite_daemon(start_daemon, db, "--max-jobs", "2")
    assert [j["id"] for j in daemon.api("GET", "/jobs")[1]["jobs"]] == [old[4]["id"], old[3]["id"]]
    assert daemon.api("GET", "/" + old[0]["id"])[0] == 404
    assert daemon.stop() == 0
    ended = time.time()

    # --max-age: finished jobs older than it go at the next start
    poll(lambda: time.time() > ended + 1.2, what="the old jobs to age")
    daemon = sqlite_daemon(start_daemon, db, "--max-age", "1s")
    fresh = daemon.wait(daemon.submit("echo", "new")["id"])
    assert [j["id"] for j in daemon.api("GET", "/jobs")[1]["jobs"]] == [fresh["id"]]
    assert daemon.api("GET", "/" + old[4]["id"])[0] == 404
    poll(lambda: "evicted 2 finished jobs older than 1.0s" in daemon.log_text(), what="the log line")


def test_paging_a_long_history_with_before_and_the_client(start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    db = tmp_path / "jobs.sqlite3"
    daemon = sqlite_daemon(start_daemon, db, "--max-running", "8", "--no-access-log")
    ids = []
    for chunk in range(3):
        ids.extend(run_jobs(daemon, 100, ["true"] if chunk != 1 else ["false"], clients=1))
    seen: list[str] = []
    cursor = None
    for _ in range(100):
        path = "/jobs?limit=70" + ("" if cursor is None else "&before=" + cursor)
        status, page = daemon.api("GET", path)
        assert status == 200, page
        seen.extend(j["id"] for j in page["jobs"])
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == ids[::-1], "every job once, newest first"
    failed: list[str] = []
    cursor = None
    while True:
        status, page = daemon.api("GET", "/jobs?state=failed&limit=30" + ("&before=" + cursor if cursor else ""))
        failed.extend(j["id"] for j in page["jobs"])
        cursor = page["next"]
        if cursor is None:
            break
    assert failed == ids[100:200][::-1]
    status, error = daemon.api("GET", "/jobs?before=" + "0" * 40)
    assert status == 400 and "before" in error["error"]

    def client_list(*argv: str) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "httprunner.client", "--url", daemon.url, "list", "--json", *argv],
            env=child_env(),
            capture_output=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 0, result.stderr
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    # more than one server page (at most 1000; the client asks for what is left)
    newest_first = ids[::-1]
    document = client_list("--limit", "250")
    assert [j["id"] for j in document["jobs"]] == newest_first[:250]
    assert document["next"] == newest_first[249]
    assert [j["id"] for j in client_list("--before", document["next"])["jobs"]] == newest_first[250:]
    everything = client_list("--all")
    assert [j["id"] for j in everything["jobs"]] == newest_first and everything["next"] is None
