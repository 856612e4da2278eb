"""The JobStore interface: what the runner and the API ask of any store.

The runner hands a store whole state transitions (a job admitted,
started, finished; its callback delivery record changed), never rows,
and asks it questions (one job, a page of the listing, the counts of
``/stats``).  Every method that may touch a disk or a server returns a
``Deferred``: the memory store answers at once, the SQLite store commits
on a writer thread, the PostgreSQL store talks to its server from a pool
of threads.  The caller does not care which store it has.

Two kinds of write:

- ``admit`` must be committed before the ``202`` is sent: its Deferred
  fires once it is, or fails with :class:`StoreUnavailable` (the request
  answers ``503``; nothing was accepted).
- every later transition (``started``, ``finished``, ``delivery_changed``,
  ``forget``) must *eventually* be recorded: a store keeps it, in order,
  and retries it until the disk or the server takes it.  Until then the
  store answers reads of that job from memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred

from httprunner.jobs import Job


class StoreError(Exception):
    """The store cannot be opened: the daemon refuses to start (one line)."""


class StoreUnavailable(Exception):
    """A write the request needed was not committed: answer 503."""


class QueueFull(Exception):
    """No slot and no room in the queue: answer 503 with Retry-After."""


class UnknownCursor(Exception):
    """``GET /jobs?before=<id>`` names a job the store does not have."""


class UnknownNode(Exception):
    """A job was pinned to a node that is not live (cluster): answer 400."""


@attrs.frozen
class ListQuery:
    """One page of ``GET /jobs``: newest first."""

    states: frozenset[str] | None = None
    #: a case-insensitive substring of the command line
    text: str | None = None
    #: only jobs submitted before this one (the paging cursor)
    before: str | None = None
    limit: int = 100


@attrs.frozen
class Stored:
    """A job found in a durable store at startup, with what it needs to run.

    ``request`` is the stored request (``env``, ``stdin``, ``timeout``) of
    a queued job, None for others.
    """

    job: Job
    request: dict[str, Any] | None = None


@attrs.frozen
class Recovery:
    """What a durable store found at startup.

    - ``queued``: jobs to run, in submission order;
    - ``lost``: jobs that were running when the daemon died, now recorded
      ``lost``: their process groups are to be killed if still alive;
    - ``deliveries``: finished jobs whose callback is still ``pending``.
    """

    queued: Sequence[Stored] = ()
    lost: Sequence[Job] = ()
    deliveries: Sequence[Job] = ()


class JobStore(Protocol):
    """Where jobs are kept; see the module docstring."""

    # Read-only properties: each store sets them as plain class attributes.

    @property
    def durable(self) -> bool:
        """True when jobs survive a restart (the queue is kept at shutdown)."""

    @property
    def shared_queue(self) -> bool:
        """True when the queue lives in the store, shared by a cluster's
        nodes (then ``release`` and ``request_cancel`` apply)."""

    @property
    def node_name(self) -> str | None:
        """This daemon's node name in a cluster, else None."""

    @property
    def description(self) -> str:
        """The name a store shows in logs and /healthz (never a password)."""

    def open(self) -> Recovery:
        """Open (create, migrate, lock) and recover; raise StoreError.

        Called once at startup, before the reactor runs (it may block).
        """

    def close(self) -> Deferred[None]:
        """Record every pending write, then release the store."""

    def health(self) -> dict[str, Any]:
        """The store's state for ``/healthz`` and ``/metrics``: ``kind``,
        ``durable``, ``ok`` (takes writes), ``last_error``, ``backlog``
        (writes not yet in); a cluster adds its node and counters."""

    def admit(self, job: Job, starting: bool) -> Deferred[None]:
        """Record a new job (and its request while it waits); see above.

        ``starting``: the runner starts it as soon as this fires; the store
        records it as running, so a crash before the spawn is recorded
        leaves it lost instead of queued to run a second time.
        """

    def starting(self, job: Job) -> Deferred[None]:
        """A durable store: record that a queued job is about to be spawned
        (fires once recorded; the runner spawns then)."""

    def requeue(self, job: Job) -> None:
        """A durable store: undo ``starting`` (the daemon stopped first)."""

    def started(self, job: Job, identify: Callable[[], tuple[int, str] | None] | None = None) -> None:
        """Record that ``job`` runs; forget its request (env, stdin).

        ``identify()`` gives the process identity (``orphans.identity``) to
        record, asked as late as the store likes, on the reactor thread;
        without it, ``job.identity`` is recorded."""

    def finished(self, job: Job) -> Deferred[bool]:
        """Record ``job``'s terminal state and output.

        Fires True once recorded; False if the store no longer gives this
        node the job (a cluster declared it lost meanwhile).  Evicts the
        oldest finished jobs beyond the retention limit.
        """

    def delivery_changed(self, job_id: str, record: dict[str, Any]) -> None:
        """Record a job's callback delivery record (``CallbackDelivery.to_json()``)."""

    def forget(self, job: Job) -> None:
        """Remove a job that was admitted and then refused (503)."""

    def release(self, job: Job) -> None:
        """Cluster: put a job this node claimed back in the shared queue."""

    def request_cancel(self, job_id: str) -> Deferred[Job | None]:
        """Cluster: cancel a job this node does not hold (see PostgresJobStore)."""

    def nodes(self) -> Deferred[list[NodeView]]:
        """Cluster: the nodes, for ``/stats``."""

    def get(self, job_id: str) -> Deferred[Job | None]:
        """The job with this id, or None (unknown or evicted)."""

    def list(self, query: ListQuery) -> Deferred[list[Job]]:
        """A page of jobs, newest first, without their output."""

    def counts(self, since: float) -> Deferred[StoreCounts]:
        """Jobs by state, and finished jobs per minute since ``since``."""

    def prune(self, before: float) -> Deferred[int]:
        """Evict finished jobs that finished before ``before`` (--max-age)."""


@attrs.frozen
class NodeView:
    """A node of a cluster, for ``/stats``."""

    name: str
    heartbeat_at: float
    alive: bool
    running: int


@attrs.frozen
class StoreCounts:
    """The numbers behind ``GET /stats``."""

    #: retained jobs in each state
    states: dict[str, int]
    #: (minute start as a POSIX timestamp, state, count) of finished jobs
    finished: Sequence[tuple[int, str, int]]


class SingleDaemonStore:
    """The cluster-only side of the interface, for a store that is not
    one: every job is this daemon's own."""

    shared_queue = False
    node_name: str | None = None

    def release(self, job: Job) -> None:
        raise NotImplementedError("the queue is this daemon's own")

    def request_cancel(self, job_id: str) -> Deferred[Job | None]:
        raise NotImplementedError("every job of this store is this daemon's own")

    def nodes(self) -> Deferred[list[NodeView]]:
        raise NotImplementedError("not a cluster")
