"""A job as a row of the SQL stores, and back.

Both SQL stores keep the same columns (the PostgreSQL store adds the
cluster's); this module maps a :class:`Job` to the values of a row and a
row (a mapping of column names) back to a job.  Timestamps are POSIX
seconds here; each store converts them to its column type.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from httprunner.jobs import QUEUED, Job
from httprunner.output import OutputBuffer, OutputCounts

#: what a lost job's ``err`` says (DESIGN §9)
LOST_ERROR = {
    "code": "LOST",
    "message": "the daemon stopped while the job was running (crash, kill or power loss); declared lost",
}

#: the columns a listing needs: everything but the output
SUMMARY_COLUMNS = (
    "seq",
    "id",
    "state",
    "command",
    "arguments",
    "callback",
    "code",
    "signal",
    "err",
    "pid",
    "node",
    "created_at",
    "started_at",
    "finished_at",
    "duration",
    "timeout",
    "cpu_seconds",
    "max_rss_bytes",
    "stdout_total",
    "stderr_total",
    "stdout_kept",
    "stderr_kept",
    "proc_start",
    "boot_id",
    "delivery_state",
    "delivery_attempts",
    "delivery_last_status",
    "delivery_last_error",
)
OUTPUT_COLUMNS = ("stdout_head", "stdout_tail", "stderr_head", "stderr_tail")


#: what an admission writes (every other column starts NULL, or 0 for counts)
ADMISSION_COLUMNS = ("id", "state", "command", "arguments", "search", "callback", "created_at", "timeout")


def job_values(job: Job) -> dict[str, Any]:
    """Every column of ``job``'s row, output included."""
    return {**admission_values(job), **ending_values(job)}


def admission_values(job: Job) -> dict[str, Any]:
    """The columns an admission writes."""
    return {
        "id": job.id,
        "state": job.state,
        "command": job.command,
        "arguments": json.dumps(job.arguments, ensure_ascii=False),
        "search": job.command_line.casefold(),
        "callback": job.callback,
        "created_at": job.created_at,
        "timeout": job.timeout,
    }


def ending_values(job: Job) -> dict[str, Any]:
    """The columns that may change after the admission (what an end writes)."""
    identity = job.identity
    delivery = job.callback_delivery
    values = {
        "state": job.state,
        "code": job.code,
        "signal": job.signal,
        "err": None if job.err is None else json.dumps(job.err, ensure_ascii=False),
        "pid": job.pid,
        "node": job.node,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "duration": job.duration,
        "cpu_seconds": job.cpu_seconds,
        "max_rss_bytes": job.max_rss_bytes,
        "proc_start": None if identity is None else identity[0],
        "boot_id": None if identity is None else identity[1],
        "delivery_state": None if delivery is None else delivery.state,
        "delivery_attempts": None if delivery is None else delivery.attempts,
        "delivery_last_status": None if delivery is None else delivery.last_status,
        "delivery_last_error": None if delivery is None else delivery.last_error,
    }
    for name, buffer in (("stdout", job.stdout), ("stderr", job.stderr)):
        head, tail, total = buffer.parts()
        values[name + "_head"] = head
        values[name + "_tail"] = tail
        values[name + "_total"] = total
        values[name + "_kept"] = len(head) + len(tail)
    return values


def job_from_row(row: Any, max_output: int, delivery_factory: Any) -> Job:
    """Rebuild a job from its row; without output columns the streams are
    empty but keep their byte counts (a listing shows no output)."""
    job = Job.__new__(Job)
    job.id = row["id"]
    job.seq = row["seq"]
    job.state = row["state"]
    job.command = row["command"]
    job.arguments = json.loads(row["arguments"])
    job.callback = row["callback"]
    job.code = row["code"]
    job.signal = row["signal"]
    job.err = None if row["err"] is None else json.loads(row["err"])
    job.pid = row["pid"]
    job.node = row["node"]
    job.pinned_node = _optional(row, "pinned_node")
    job.created_at = row["created_at"]
    job.started_at = row["started_at"]
    job.finished_at = row["finished_at"]
    job.duration = row["duration"]
    job.timeout = row["timeout"]
    job.cpu_seconds = row["cpu_seconds"]
    job.max_rss_bytes = row["max_rss_bytes"]
    job.launch = None
    job.lease = _optional(row, "lease")
    job.identity = None if row["proc_start"] is None else (row["proc_start"], row["boot_id"])
    for name in ("stdout", "stderr"):
        head = _optional(row, name + "_head")
        tail = _optional(row, name + "_tail")
        total = row[name + "_total"]
        if job.state == QUEUED or (head is None and total == 0 and _selected(row, name + "_head")):
            # A job yet to run (queued after a restart, or just claimed in a
            # cluster), or one that wrote nothing yet: buffers that take
            # its output.
            buffer: OutputBuffer = OutputBuffer(max_output)
        elif head is None:
            # No output columns: an empty buffer that still shows how much
            # was written and dropped.
            buffer = OutputCounts(max_output, total, total - row[name + "_kept"])
        else:
            buffer = OutputBuffer.restore(max_output, bytes(head), bytes(tail or b""), total)
        setattr(job, name, buffer)
    if row["delivery_state"] is None:
        job.callback_delivery = None
    else:
        job.callback_delivery = delivery_factory(
            {
                "state": row["delivery_state"],
                "attempts": row["delivery_attempts"],
                "last_status": row["delivery_last_status"],
                "last_error": row["delivery_last_error"],
            }
        )
    return job


def _optional(row: Mapping[str, Any], column: str) -> Any:
    """A column some queries (or stores) do not select: None then.

    (``sqlite3.Row`` is no ``dict``: it has no ``get`` and raises
    IndexError for a missing name.)"""
    try:
        return row[column]
    except (IndexError, KeyError):
        return None


def _selected(row: Any, column: str) -> bool:
    """Whether the query selected ``column`` (it may still be NULL)."""
    keys = row.keys()
    return column in keys
