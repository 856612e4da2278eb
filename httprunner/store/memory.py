"""The in-memory store: the default, and the seed's behaviour.

Nothing survives a restart.  Retention (``--max-jobs``) counts finished
jobs only: when a job finishes and more finished jobs are kept than
allowed, the oldest finished ones are evicted.  Queued and running jobs
are never evicted; their number is bounded by the runner
(``--max-running`` + ``--max-queued``).
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from httprunner.jobs import Job
from httprunner.store.base import ListQuery, Recovery, SingleDaemonStore, StoreCounts, UnknownCursor


class MemoryJobStore(SingleDaemonStore):
    """Jobs in a dict, in submission order; finished ones in finishing order."""

    durable = False
    description = "memory"

    def __init__(self, max_finished: int) -> None:
        if max_finished < 1:
            raise ValueError("max_finished must be at least 1")
        self.max_finished = max_finished
        self._jobs: dict[str, Job] = {}
        # ids in finishing order, so that eviction removes the oldest
        # finished job (a deque costs ~60 B less per job than an OrderedDict)
        self._finished: deque[str] = deque()

    def __len__(self) -> int:
        return len(self._jobs)

    def open(self) -> Recovery:
        return Recovery()

    def close(self) -> Deferred[None]:
        return succeed(None)

    def health(self) -> dict[str, Any]:
        return {"kind": "memory", "durable": False, "ok": True, "last_error": None, "backlog": 0}

    # -- transitions ----------------------------------------------------

    def admit(self, job: Job, starting: bool = False) -> Deferred[None]:
        self._jobs[job.id] = job
        return succeed(None)

    def starting(self, job: Job) -> Deferred[None]:
        return succeed(None)

    def requeue(self, job: Job) -> None:
        pass

    def started(self, job: Job, identify: Callable[[], tuple[int, str] | None] | None = None) -> None:
        pass

    def finished(self, job: Job) -> Deferred[bool]:
        self._finished.append(job.id)
        while len(self._finished) > self.max_finished:
            self._jobs.pop(self._finished.popleft(), None)
        return succeed(True)

    def delivery_changed(self, job_id: str, record: dict[str, Any]) -> None:
        pass  # the job in memory holds the record itself

    def forget(self, job: Job) -> None:
        self._jobs.pop(job.id, None)

    # -- questions ------------------------------------------------------

    def get(self, job_id: str) -> Deferred[Job | None]:
        return succeed(self._jobs.get(job_id))

    def list(self, query: ListQuery) -> Deferred[list[Job]]:
        try:
            return succeed(list(itertools.islice(self._matching(query), query.limit)))
        except UnknownCursor as e:
            # A Deferred that fails, as every store answers: never a raise.
            return fail(e)

    def _matching(self, query: ListQuery) -> Iterator[Job]:
        jobs: Iterator[Job] = reversed(self._jobs.values())
        if query.before is not None:
            cursor = self._jobs.get(query.before)
            if cursor is None:
                raise UnknownCursor(query.before)
            jobs = itertools.dropwhile(lambda job: job is not cursor, jobs)
            next(jobs)
        text = query.text.casefold() if query.text else None
        for job in jobs:
            if query.states is not None and job.state not in query.states:
                continue
            if text is not None and text not in job.command_line.casefold():
                continue
            yield job

    def counts(self, since: float) -> Deferred[StoreCounts]:
        states = Counter(job.state for job in self._jobs.values())
        finished: Counter[tuple[int, str]] = Counter()
        for job in self._jobs.values():
            if job.finished_at is not None and job.finished_at >= since:
                finished[int(job.finished_at // 60) * 60, job.state] += 1
        return succeed(
            StoreCounts(
                states=dict(states),
                finished=[(minute, state, count) for (minute, state), count in sorted(finished.items())],
            )
        )

    def prune(self, before: float) -> Deferred[int]:
        evicted = 0
        while self._finished:
            job = self._jobs.get(self._finished[0])
            if job is not None and (job.finished_at or 0) >= before:
                break
            self._finished.popleft()
            if job is not None:
                del self._jobs[job.id]
                evicted += 1
        return succeed(evicted)
