"""What a cluster node does beside running its jobs (``--store postgresql://``).

A node service over the PostgreSQL store and the runner:

- **claims** the oldest queued jobs it may run whenever it has free slots:
  woken by a ``NOTIFY`` hint (debounced) or a slot that frees, and every
  second in case a hint was lost;
- **heartbeats** every ``--heartbeat`` seconds; the answer says whether a
  survivor declared this node dead meanwhile (it was paused or cut off)
  and which of its running jobs it still holds: the processes of the
  others are ended (their results would be refused anyway);
- **sweeps**: declares nodes silent for 3 heartbeats dead and their jobs
  lost (one node at a time; a node sweeps only once it has itself been
  connected for 3 heartbeats, so the return of a database every node lost
  does not make the first node back declare all the others dead);
- acts on **cancel requests** other nodes recorded for its jobs;
- writes the **output** of its running jobs every 0.5 s while it changes,
  for followers on other nodes;
- takes over **callbacks** no live node is sending (a dead node's, a lost
  job's), and **prunes** the history (``--max-jobs``, ``--max-age``): at
  start, every minute, and as soon as this node has recorded a tenth of
  ``--max-jobs`` finished jobs since its last prune.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from httprunner.jobs import Job
from httprunner.store.base import Stored
from httprunner.store.postgres import PRUNE_BATCH, Claimed, Heartbeat, PostgresJobStore

#: seconds between claim/cancel/sweep rounds when no hint arrives
POLL_INTERVAL = 1.0
#: seconds between writes of a running job's new output
OUTPUT_INTERVAL = 0.5
#: seconds between prunes of the history, at the most
PRUNE_INTERVAL = 60.0
#: a node prunes sooner once it has recorded this share of --max-jobs
#: finished jobs since its last prune: a busy cluster must not keep many
#: times --max-jobs for a minute (at 500 jobs/s, 60 s are 30,000 jobs)
PRUNE_SHARE = 0.1
#: seconds until a heartbeat that failed is tried again (at most a quarter
#: of --heartbeat): the first one after the database returns must not wait
#: a whole interval, or a short outage could cost a node its jobs
HEARTBEAT_RETRY = 1.0
#: callbacks taken over per round, and while fewer than this are pending here
DELIVERIES_PER_ROUND = 16
MAX_DELIVERIES = 64


class ClusterNode(Service):
    """One node's part in the cluster; see the module docstring."""

    log = Logger()

    def __init__(
        self,
        *,
        store: PostgresJobStore,
        runner: Any,
        resolve: Callable[[Stored], Any],
        commands: list[str] | None,
        outbox: Any,
        reactor: Any,
        max_age: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.runner = runner
        self.resolve = resolve
        #: the commands this node's policy allows (None: any)
        self.commands = commands
        self.outbox = outbox
        self.reactor = reactor
        self.max_age = max_age
        self.monotonic = monotonic
        self._loops: list[LoopingCall] = []
        self._claiming = False
        self._claim_again = False
        self._wake_call: Any = None
        self._beating = False
        self._beat_retry: Any = None
        self._polling = False
        self._syncing: set[str] = set()
        #: (stdout total, stderr total) last written per running job
        self._synced: dict[str, tuple[int, int, int, int]] = {}
        self._connected_since: float | None = None
        #: None: prune at the first poll (the history may have grown while
        #: this node was away)
        self._last_prune: float | None = None
        self._pruning = False
        #: the last prune evicted a whole batch: there is more to evict
        self._prune_more = False

    # -- IService -------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.store.on_notify = self._notified
        self.runner.on_free_slot = self.wake
        self._connected_since = self.monotonic()
        for interval, work in (
            (POLL_INTERVAL, self._poll),
            (self.store.heartbeat_interval, self._heartbeat),
            (OUTPUT_INTERVAL, self._sync_output),
        ):
            loop = LoopingCall(work)
            loop.clock = self.reactor
            loop.start(interval, now=True).addErrback(lambda f: self.log.failure("cluster loop failed", f))
            self._loops.append(loop)

    def stopService(self) -> None:
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        for call in (self._wake_call, self._beat_retry):
            if call is not None and call.active():
                call.cancel()
        self._wake_call = None
        self._beat_retry = None
        self.runner.on_free_slot = lambda: None
        self.store.on_notify = lambda channel, payload: None

    # -- claiming -------------------------------------------------------------

    def wake(self) -> None:
        """Claim soon (debounced: one claim per reactor turn at most)."""
        if self.running and self._wake_call is None:
            self._wake_call = self.reactor.callLater(0, self._claim)

    def _notified(self, channel: str, payload: str) -> None:
        self.store.counters["notifies_received"] += 1
        if channel == self.store.channel("queued"):
            if payload in ("", self.store.node_name):
                self.wake()
        elif channel == self.store.channel("cancel"):
            self._cancel_requested()

    def _claim(self) -> None:
        self._wake_call = None
        if self._claiming:
            self._claim_again = True
            return
        free = self.runner.free_slots
        # A runner that stops (SIGTERM: its jobs are ending) takes no job:
        # each would be claimed and released again, over and over.
        if free <= 0 or not self.running or not self.runner.running:
            return
        self._claiming = True
        self._claim_again = False
        d = self.store.claim(free, self.commands, self.runner.blocked_rules())
        d.addCallbacks(self._claimed, self._claim_failed, callbackArgs=(free,))

    def _claimed(self, claimed: list[Claimed], asked: int) -> None:
        self._claiming = False
        for item in claimed:
            self._run(item)
        if len(claimed) == asked or self._claim_again:
            self.wake()

    def _claim_failed(self, failure: Any) -> None:
        self._claiming = False
        self.log.debug("claim failed: {error}", error=failure.value)

    def _run(self, item: Claimed) -> None:
        job = item.job
        try:
            spec = self.resolve(Stored(job, item.request))
        except Exception as e:
            self.runner.refuse_claimed(job, getattr(e, "message", None) or str(e))
            return
        self.runner.run_claimed(job, spec)

    # -- the poll ---------------------------------------------------------------

    def _poll(self) -> None:
        if self._polling:
            return
        self._polling = True
        self.wake()
        self._cancel_requested()
        if self._may_sweep():
            self.store.sweep().addCallbacks(self._swept, lambda f: None)
        if self.outbox.notifier.pending < MAX_DELIVERIES:
            self.store.claim_deliveries(DELIVERIES_PER_ROUND).addCallbacks(self._deliver, lambda f: None)
        now = self.monotonic()
        if self._prune_due(now):
            self._last_prune = now
            self._pruning = True
            before = time.time() - self.max_age if self.max_age else 0.0
            d = self.store.prune(before)
            d.addCallbacks(self._pruned, lambda f: None)
            d.addBoth(self._pruned_done)
        d = self.store.queued_count()
        d.addCallbacks(self._queue_length, lambda f: None)
        d.addBoth(self._polled)

    def _polled(self, _: object) -> None:
        self._polling = False

    def _queue_length(self, count: int) -> None:
        self.runner.shared_queued = count

    def _may_sweep(self) -> bool:
        if self.store.last_error is not None:
            self._connected_since = None
            return False
        now = self.monotonic()
        if self._connected_since is None:
            self._connected_since = now
        return now - self._connected_since >= 3 * self.store.heartbeat_interval

    def _swept(self, lost: list[Job]) -> None:
        for job in lost:
            self.log.warn("job {job_id} of dead node {node} declared lost", job_id=job.id, node=job.node)
        # A dead node on this same machine leaves its processes here.
        self.runner.end_orphans(lost)

    def _deliver(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.outbox.resume(job)

    def _prune_due(self, now: float) -> bool:
        if self._pruning:
            return False
        if self._last_prune is None or now - self._last_prune >= PRUNE_INTERVAL or self._prune_more:
            return True
        return self.store.finished_since_prune >= max(1, int(self.store.max_finished * PRUNE_SHARE))

    def _pruned(self, count: int) -> None:
        self._prune_more = count >= PRUNE_BATCH
        if count:
            self.log.info("evicted {count} finished jobs from the cluster's history", count=count)

    def _pruned_done(self, _: object) -> None:
        self._pruning = False

    def _cancel_requested(self) -> None:
        self.store.cancel_requests().addCallbacks(self._cancel, lambda f: None)

    def _cancel(self, ids: list[str]) -> None:
        for job_id in ids:
            job = self.runner.local_job(job_id)
            if job is not None and not job.finished:
                self.log.info("job {job_id} canceled from another node", job_id=job_id)
                self.runner.cancel(job)

    # -- heartbeat --------------------------------------------------------------

    def _heartbeat(self) -> None:
        if self._beating:
            return
        self._beating = True
        leases = self.runner.running_leases()
        d: Deferred[Heartbeat] = self.store.heartbeat(self.runner.running_count, list(leases))
        d.addCallbacks(self._beat, self._missed, callbackArgs=(leases,))

    def _beat(self, beat: Heartbeat, asked: dict[str, str | None]) -> None:
        self._beating = False
        if not beat.alive:
            self.log.warn("this node was declared dead while it was alive (paused or cut off); rejoining")
        for job_id, lease in asked.items():
            if beat.leases.get(job_id) != lease:
                self.log.warn(
                    "job {job_id} no longer belongs to this node (declared lost): ending its processes", job_id=job_id
                )
                self.runner.abandon(job_id)

    def _missed(self, failure: Any) -> None:
        self._beating = False
        self._connected_since = None
        if self.running and self._beat_retry is None:
            delay = min(HEARTBEAT_RETRY, self.store.heartbeat_interval / 4)
            self._beat_retry = self.reactor.callLater(delay, self._retry_heartbeat)

    def _retry_heartbeat(self) -> None:
        self._beat_retry = None
        self._heartbeat()

    # -- live output --------------------------------------------------------------

    def _sync_output(self) -> None:
        """Write what each running job wrote since the last time: the tail
        of a stream that grew, its head only while the head grows."""
        for job_id in list(self._synced):
            if self.runner.local_job(job_id) is None:
                del self._synced[job_id]
        for job_id in self.runner.running_leases():
            job = self.runner.local_job(job_id)
            if job is None or job_id in self._syncing:
                continue
            previous = self._synced.get(job_id, (0, 0, 0, 0))
            parts: dict[str, bytes | int] = {}
            now: list[int] = []
            for i, (name, buffer) in enumerate((("stdout", job.stdout), ("stderr", job.stderr))):
                head, tail, total = buffer.parts()
                now.extend((total, len(head)))
                if total == previous[2 * i]:
                    continue
                if len(head) != previous[2 * i + 1]:
                    parts[name + "_head"] = head
                parts[name + "_tail"] = tail
                parts[name + "_total"] = total
                parts[name + "_kept"] = len(head) + len(tail)
            if not parts:
                continue
            self._syncing.add(job_id)
            self._synced[job_id] = (now[0], now[1], now[2], now[3])
            self.store.output_progress(job, parts).addBoth(self._synced_one, job_id)

    def _synced_one(self, result: object, job_id: str) -> None:
        self._syncing.discard(job_id)
