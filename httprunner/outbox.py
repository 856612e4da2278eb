"""Completion callbacks as an outbox: sent once the store has the result.

A runner observer.  When a job with a ``callback`` reaches its end, its
delivery record starts ``pending`` (so the store records it with the
terminal state); once the store confirms the terminal state, the notifier
POSTs the job JSON as it was then (record ``pending``, no attempt yet);
every change of the record is handed to the store.  After a restart, the
deliveries a durable store still has ``pending`` resume with the attempts
already made counted.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from httprunner.jobs import Job
from httprunner.notify import CallbackDelivery, Notifier


def delivery_from_json(record: dict[str, Any]) -> CallbackDelivery:
    """A delivery record as a store kept it."""
    delivery = CallbackDelivery()
    delivery.state = record["state"]
    delivery.attempts = record["attempts"] or 0
    delivery.last_status = record["last_status"]
    delivery.last_error = record["last_error"]
    return delivery


def initial_body(job: Job) -> bytes:
    """The body of every attempt: the job with a fresh pending record.

    Rendering the finished job again with that record gives the same bytes
    as when it finished, so a resumed delivery sends what the first
    attempt sent.
    """
    record = job.callback_delivery
    job.callback_delivery = CallbackDelivery()
    try:
        return job.to_json_bytes()
    finally:
        job.callback_delivery = record


class Outbox:
    """Delivers each finished job's callback; see the module docstring."""

    log = Logger()

    def __init__(self, notifier: Notifier, store: Any) -> None:
        self.notifier = notifier
        self.store = store

    def job_started(self, job: Job, spawn_seconds: float) -> None:
        pass

    def job_finished(self, job: Job) -> None:
        if job.callback is not None:
            job.callback_delivery = CallbackDelivery()

    def job_recorded(self, job: Job) -> None:
        if job.callback is not None:
            self._send(job, job.to_json_bytes())

    def resume(self, pending: list[Job]) -> None:
        """Send the deliveries a durable store kept ``pending``."""
        for job in pending:
            if job.callback is None or job.callback_delivery is None:
                continue
            self.log.info(
                "resuming the callback of job {job_id} ({attempts} attempts made)",
                job_id=job.id,
                attempts=job.callback_delivery.attempts,
            )
            self._send(job, initial_body(job))

    def _send(self, job: Job, body: bytes) -> None:
        d = self.notifier.deliver(job.id, job.callback, body, job.callback_delivery)
        d.addCallback(lambda _: self.store.delivery_changed(job))
