"""Where jobs are kept: the JobStore interface and the in-memory store.

Retention (``--max-jobs``) counts finished jobs only: when a job finishes
and more finished jobs are kept than allowed, the oldest finished ones are
evicted.  Queued and running jobs are never evicted; their number is
bounded by the runner (``--max-running`` + ``--max-queued``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterator
from typing import Protocol

from httprunner.jobs import Job


class JobStore(Protocol):
    def add(self, job: Job) -> None: ...

    def get(self, job_id: str) -> Job | None: ...

    def finished(self, job: Job) -> list[Job]: ...

    def newest(self, states: Collection[str] | None = None) -> Iterator[Job]: ...

    def __len__(self) -> int: ...


class MemoryJobStore:
    """Jobs in a dict, in submission order; finished ones in finishing order."""

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

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def finished(self, job: Job) -> list[Job]:
        """Record that ``job`` reached its terminal state; return the evicted."""
        self._finished.append(job.id)
        evicted = []
        while len(self._finished) > self.max_finished:
            evicted.append(self._jobs.pop(self._finished.popleft()))
        return evicted

    def newest(self, states: Collection[str] | None = None) -> Iterator[Job]:
        """Jobs newest first (by submission), optionally only in ``states``."""
        for job in reversed(list(self._jobs.values())):
            if states is None or job.state in states:
                yield job
