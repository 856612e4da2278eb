"""Delivering callbacks: the delivery record, retries, the runner observer.

When a job with a ``callback`` URL reaches its terminal state, the runner
tells :class:`CallbackOnFinish`, which hands the job's JSON bytes to
:meth:`Notifier.deliver`. The notifier POSTs them to the URL and records
every attempt in a :class:`CallbackDelivery` that the job JSON shows as
``callback_delivery``.

Outbox: a record can be rebuilt from stored fields
(:meth:`CallbackDelivery.from_json`) and handed to :meth:`Notifier.deliver`
again after a restart; the attempts it already made count. ``on_change``
tells a store about every change of a record so it can persist it, and
``abandon_as_pending`` leaves deliveries cut short by a shutdown
``pending``, for the next start.

A delivery never raises into its caller and never affects another one.
Every attempt has a deadline covering resolution, connect, request and
response; see :mod:`.transport` for what is sent and read.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol, TypedDict

from OpenSSL import SSL
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS

from httprunner import __version__
from httprunner.callbacks.guard import CallbackGuard
from httprunner.callbacks.signing import sign_webhook
from httprunner.callbacks.transport import CheckedHTTP, EndpointFactory, read_limited, resolve
from httprunner.callbacks.urls import CallbackTarget, CallbackURLError, IPAddress, parse_callback_url

if TYPE_CHECKING:
    from httprunner.callbacks.transport import CallbackReactor

#: How much of a receiver's answer is read before the connection is dropped.
RESPONSE_READ_LIMIT = 4096

DELIVERY_PENDING = "pending"
DELIVERY_DELIVERED = "delivered"
DELIVERY_FAILED = "failed"
DELIVERY_REFUSED = "refused"
#: Every state of a delivery record; all but ``pending`` are final.
DELIVERY_STATES = (DELIVERY_PENDING, DELIVERY_DELIVERED, DELIVERY_FAILED, DELIVERY_REFUSED)

SHUTDOWN_ERROR = "the daemon shut down before the callback was delivered"
CANCELED_ERROR = "the callback delivery was canceled"

#: The namespace of callback log events. Operators filter on it (docs/operating.rst,
#: "Logs"), so it stays what it was before notify.py became this package
#: (a ``Logger()`` class attribute would take this module's name instead).
LOG_NAMESPACE = "httprunner.notify.Notifier"
_log = Logger(namespace=LOG_NAMESPACE)


class DeliveryJSON(TypedDict):
    """``callback_delivery`` in the job JSON, and what a store keeps of a record."""

    state: str
    attempts: int
    last_status: int | None
    last_error: str | None


# ---------------------------------------------------------------------------
# The delivery record


class CallbackDelivery:
    """What happened to one job's callback so far; updated in place, shown in the job JSON.

    ``attempts`` counts the attempts that were made and recorded;
    ``last_status``/``last_error`` describe the last one (or why there was
    none). ``__slots__`` because one is retained per finished job with a
    callback.
    """

    __slots__ = ("state", "attempts", "last_status", "last_error")

    def __init__(
        self,
        *,
        state: str = DELIVERY_PENDING,
        attempts: int = 0,
        last_status: int | None = None,
        last_error: str | None = None,
    ) -> None:
        self.state = state
        self.attempts = attempts
        self.last_status = last_status
        self.last_error = last_error

    @property
    def final(self) -> bool:
        """True once delivered, failed or refused: it will not be sent again."""
        return self.state != DELIVERY_PENDING

    def to_json(self) -> DeliveryJSON:
        return {
            "state": self.state,
            "attempts": self.attempts,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> CallbackDelivery:
        """Rebuild a record from what :meth:`to_json` gave (a store's copy).

        Checks every field, since a store's file can be old or damaged:
        :class:`ValueError` names the first bad one. Other keys are ignored.
        """
        state = data.get("state")
        attempts = data.get("attempts")
        last_status = data.get("last_status")
        last_error = data.get("last_error")
        if not isinstance(state, str) or state not in DELIVERY_STATES:
            raise ValueError(f"callback_delivery state {state!r} is not one of {', '.join(DELIVERY_STATES)}")
        # bool is an int in Python; a stored true/false is no count or status.
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
            raise ValueError(f"callback_delivery attempts {attempts!r} is not a count")
        if last_status is not None and (
            not isinstance(last_status, int) or isinstance(last_status, bool) or not 100 <= last_status <= 999
        ):
            raise ValueError(f"callback_delivery last_status {last_status!r} is not an HTTP status")
        if last_error is not None and not isinstance(last_error, str):
            raise ValueError(f"callback_delivery last_error {last_error!r} is not text")
        return cls(state=state, attempts=attempts, last_status=last_status, last_error=last_error)

    def __repr__(self) -> str:
        return f"<CallbackDelivery {self.to_json()!r}>"


def _ignore_change(job_id: str, delivery: CallbackDelivery) -> None:
    pass


def _ignore_attempt(outcome: str) -> None:
    pass


# ---------------------------------------------------------------------------
# The outcome of one attempt


@dataclass
class _Result:
    """The outcome of one attempt."""

    status: int | None = None
    error: str | None = None
    retry: bool = False
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _status_text(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _classify_status(status: int) -> _Result:
    if 200 <= status < 300:
        return _Result(status=status)
    if 300 <= status < 400:
        return _Result(status=status, error=_status_text(status) + ": redirects are not followed")
    if status == 429 or 500 <= status < 600:
        return _Result(status=status, error=_status_text(status), retry=True)
    return _Result(status=status, error=_status_text(status))


_NETWORK_ERRORS = (
    net_error.ConnectError,
    net_error.ConnectionLost,
    net_error.ConnectionDone,
    net_error.TimeoutError,
    CancelledError,
    OSError,
    SSL.Error,
)


_TIMED_OUT = "timed out"


def _describe(exc: BaseException) -> tuple[str, bool]:
    """Human text for a failed request, and whether it is a network error (retried)."""
    reasons = getattr(exc, "reasons", None)
    if reasons:  # ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed
        inner = [r.value for r in reasons if isinstance(r, Failure)]
        if any(isinstance(e, CancelledError) for e in inner):
            return _TIMED_OUT, True
        if any(isinstance(e, SSL.Error) for e in inner):
            return "TLS error: " + "; ".join(str(e)[:200] for e in inner), True
        if isinstance(exc, ResponseNeverReceived):
            return "connection closed before a response was received", True
        return "connection lost while talking to the receiver", True
    if isinstance(exc, (CancelledError, net_error.TimeoutError)):
        return _TIMED_OUT, True
    if isinstance(exc, net_error.ConnectionRefusedError):
        return "connection refused", True
    if isinstance(exc, net_error.DNSLookupError):
        return "could not resolve the host", True
    if isinstance(exc, _NETWORK_ERRORS):
        text = str(exc).strip() or type(exc).__name__
        return text[:300], True
    return f"internal error: {type(exc).__name__}", False


@dataclass(eq=False)
class _Pending:
    """One delivery in progress; ``abort_reason`` is set before it is canceled."""

    task: Deferred[None] | None = None
    abort_reason: str | None = None
    #: aborted by :meth:`Notifier.stop` (not by its caller)
    shutdown: bool = False


# ---------------------------------------------------------------------------
# The notifier


class Notifier:
    """Delivers completion callbacks: guarded targets, signed bodies, bounded retries.

    ``reactor`` must provide time (``callLater``/``seconds``) and
    ``nameResolver``. ``endpoint_factory(address, port)`` makes the TCP
    endpoint for a checked address (default: TCP4/TCP6 on ``reactor``);
    https wraps it in TLS for the URL's host name (``tls_policy``).

    ``on_attempt(outcome)`` is told each attempt's outcome (``delivered``,
    ``retry``, ``failed`` or ``refused``: the metrics). ``on_change(job_id,
    delivery)`` is called, synchronously, after every change of a record:
    each recorded attempt (a retry still ``pending`` included), the final
    state, and an abandonment at shutdown; a store persists the record
    there. The record is updated in place later: copy it (``to_json()``)
    before returning. An exception in a hook is logged and ignored.

    ``abandon_as_pending``: what :meth:`stop` does to deliveries it cuts
    short. False (the memory store): they end ``failed`` with
    :data:`SHUTDOWN_ERROR`. True (a durable store, the callback outbox):
    they stay ``pending``, with the attempts recorded so far, so that the
    next start resumes them.
    """

    def __init__(
        self,
        reactor: CallbackReactor,
        *,
        guard: CallbackGuard,
        secret: bytes | None,
        attempts: int = 3,
        timeout: float = 10.0,
        max_in_flight: int = 32,
        random: Callable[[], float] = _random.random,
        endpoint_factory: EndpointFactory | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        tls_policy: IPolicyForHTTPS | None = None,
        on_attempt: Callable[[str], None] = _ignore_attempt,
        on_change: Callable[[str, CallbackDelivery], None] = _ignore_change,
        abandon_as_pending: bool = False,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._reactor = reactor
        self._guard = guard
        self._secret = secret
        self._attempts = attempts
        self._timeout = timeout
        self._random = random
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._slots = DeferredSemaphore(max_in_flight)
        self._http = CheckedHTTP(
            reactor,
            timeout=timeout,
            max_per_host=max_in_flight,
            endpoint_factory=endpoint_factory,
            tls_policy=tls_policy,
        )
        self._pending: set[_Pending] = set()
        self._idle_waiters: list[Deferred[None]] = []
        self._stopped = False
        self._on_attempt = on_attempt
        self._on_change = on_change
        self._abandon_as_pending = abandon_as_pending

    # -- public --------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Deliveries not finished yet (queued, in an attempt, or waiting to retry)."""
        return len(self._pending)

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        base * 2**(attempt-1), capped, then +/-20 % jitter so receivers that
        came back are not hit by every retry at the same moment.
        """
        delay: float = min(self._backoff_base * 2 ** (attempt - 1), self._backoff_cap)
        return delay * (0.8 + 0.4 * self._random())

    def deliver(self, job_id: str, url: str, body: bytes, delivery: CallbackDelivery) -> Deferred[CallbackDelivery]:
        """POST ``body`` to ``url``; fires with ``delivery`` when it is final. Never errbacks.

        A record that already made ``k`` attempts (resumed from a store)
        gets at most ``attempts - k`` more, numbered from ``k + 1``, the
        first at once. A final record is not sent again: the Deferred fires
        with it unchanged. After :meth:`stop`, or when stop cuts a delivery
        short, the Deferred fires with the record abandoned (``failed``, or
        still ``pending`` with ``abandon_as_pending``).
        """
        if delivery.final:
            return succeed(delivery)
        if self._stopped:
            self._abandon(job_id, delivery, SHUTDOWN_ERROR, shutdown=True)
            return succeed(delivery)
        try:
            target = parse_callback_url(url)
        except CallbackURLError as e:
            delivery.state = DELIVERY_FAILED
            delivery.last_error = str(e)
            _log.warn("callback for job {job_id} not sent: {error}", job_id=job_id, error=str(e))
            self._changed(job_id, delivery)
            return succeed(delivery)
        if delivery.attempts >= self._attempts:
            # Resumed with every attempt used (the setting was lowered since):
            # the last attempt's status and error say why it failed.
            delivery.state = DELIVERY_FAILED
            if delivery.last_error is None:
                delivery.last_error = f"no attempt left ({delivery.attempts} made, {self._attempts} allowed)"
            _log.warn(
                "callback for job {job_id} to {url!r} not resumed: {error}",
                job_id=job_id,
                url=target.log_url,
                attempt=delivery.attempts,
                error=delivery.last_error,
            )
            self._changed(job_id, delivery)
            return succeed(delivery)

        pending = _Pending()
        result: Deferred[CallbackDelivery] = Deferred(lambda d: self._abort(pending, CANCELED_ERROR, d, delivery))
        self._pending.add(pending)

        def finished(_: object) -> None:
            self._pending.discard(pending)
            if not result.called:
                result.callback(delivery)
            if not self._pending:
                waiters, self._idle_waiters = self._idle_waiters, []
                for waiter in waiters:
                    waiter.callback(None)

        pending.task = Deferred.fromCoroutine(self._run(job_id, target, body, delivery, pending))
        pending.task.addBoth(finished)
        return result

    def stop(self, grace: float = 5.0) -> Deferred[None]:
        """Let pending deliveries finish for at most ``grace`` seconds, then abandon them.

        Abandoned deliveries end ``failed`` with :data:`SHUTDOWN_ERROR`, or
        stay ``pending`` with ``abandon_as_pending``; an attempt cut short
        is not counted. Fires with None when nothing is pending; leaves no
        timer behind.
        """
        if self._stopped:
            return succeed(None)
        done: Deferred[None] = Deferred()
        timer = self._reactor.callLater(max(grace, 0.0), self._abort_all)

        def idle(_: object) -> None:
            if timer.active():
                timer.cancel()
            self._stopped = True
            self._http.close()
            done.callback(None)

        if not self._pending:
            idle(None)
        else:
            waiter: Deferred[None] = Deferred()
            self._idle_waiters.append(waiter)
            waiter.addCallback(idle)
            if grace <= 0:
                timer.cancel()
                self._abort_all()
        return done

    # -- delivery ------------------------------------------------------------

    def _changed(self, job_id: str, delivery: CallbackDelivery) -> None:
        """Tell ``on_change``; a broken hook must not break the delivery."""
        try:
            self._on_change(job_id, delivery)
        except Exception:
            _log.failure("callback for job {job_id}: the on_change hook failed", job_id=job_id)

    def _abandon(self, job_id: str, delivery: CallbackDelivery, reason: str, *, shutdown: bool) -> None:
        """Give up on a delivery for now: ``failed``, or ``pending`` for the next start."""
        if not (shutdown and self._abandon_as_pending):
            delivery.state = DELIVERY_FAILED
            delivery.last_error = reason
        self._changed(job_id, delivery)

    def _abort_all(self) -> None:
        # Mark every delivery first: canceling one frees a slot, and a queued
        # delivery handed that slot must see it is aborted before connecting.
        victims = [p for p in self._pending if p.task is not None and not p.task.called]
        for pending in victims:
            pending.abort_reason = SHUTDOWN_ERROR
            pending.shutdown = True
        for pending in victims:
            if pending.task is not None and not pending.task.called:
                pending.task.cancel()

    def _abort(
        self,
        pending: _Pending,
        reason: str,
        result: Deferred[CallbackDelivery],
        delivery: CallbackDelivery,
    ) -> None:
        """Canceller of the caller's Deferred: stop the delivery, fire with the record."""
        if pending.task is not None and not pending.task.called:
            pending.abort_reason = reason
            pending.task.cancel()
        if not result.called:
            result.callback(delivery)

    async def _run(
        self,
        job_id: str,
        target: CallbackTarget,
        body: bytes,
        delivery: CallbackDelivery,
        pending: _Pending,
    ) -> None:
        # A resumed record goes on from the attempts it made; its first try
        # here does not wait (the restart was the pause).
        first = delivery.attempts + 1
        try:
            for attempt in range(first, self._attempts + 1):
                if attempt > first:
                    await deferLater(self._reactor, self.backoff_delay(attempt - 1))
                await self._slots.acquire()
                try:
                    if pending.abort_reason is not None:
                        raise CancelledError()
                    started = time.monotonic()
                    result = await self._attempt_with_deadline(job_id, target, body)
                finally:
                    self._slots.release()
                if pending.abort_reason is not None:
                    raise CancelledError()
                if self._record(job_id, target, delivery, attempt, result, time.monotonic() - started):
                    return
        except CancelledError:
            self._abandon(job_id, delivery, pending.abort_reason or CANCELED_ERROR, shutdown=pending.shutdown)
            if delivery.final:
                _log.warn(
                    "callback for job {job_id} to {url!r} abandoned: {error}",
                    job_id=job_id,
                    url=target.log_url,
                    attempt=delivery.attempts,
                    error=delivery.last_error,
                )
            else:
                _log.info(
                    "callback for job {job_id} to {url!r} left pending for the next start",
                    job_id=job_id,
                    url=target.log_url,
                    attempt=delivery.attempts,
                    state=delivery.state,
                )
        except Exception:
            # A bug here must not escape into the runner or leave "pending".
            delivery.state = DELIVERY_FAILED
            delivery.last_error = "internal error"
            _log.failure("callback for job {job_id} crashed", job_id=job_id)
            self._changed(job_id, delivery)

    async def _attempt_with_deadline(self, job_id: str, target: CallbackTarget, body: bytes) -> _Result:
        """One attempt, canceled ``timeout`` seconds after it starts.

        The deadline covers resolution, connect, request and the body read
        (treq's own ``timeout`` stops at the response headers). It is armed
        before treq's timer, so at equal deadlines it fires first and the
        outcome reads "timed out" whatever error the cancellation produced.
        """
        expired = False
        attempt: Deferred[_Result] | None = None

        def expire() -> None:
            nonlocal expired
            expired = True
            if attempt is not None:
                attempt.cancel()

        deadline = self._reactor.callLater(self._timeout, expire)
        try:
            attempt = Deferred.fromCoroutine(self._attempt(job_id, target, body))
            result = await attempt
        finally:
            if deadline.active():
                deadline.cancel()
        # If the status line had arrived the receiver has the body: keep that
        # outcome; only the body read was cut short.
        if expired and result.status is None:
            return _Result(error=f"timed out after {self._timeout:g} s", retry=True)
        return result

    def _record(
        self,
        job_id: str,
        target: CallbackTarget,
        delivery: CallbackDelivery,
        attempt: int,
        result: _Result,
        duration: float,
    ) -> bool:
        """Apply one attempt's result to ``delivery``, log it, tell ``on_change``; True when final."""
        if result.refused:
            delivery.state = DELIVERY_REFUSED
            delivery.last_error = result.error
            self._on_attempt("refused")
            _log.warn(
                "callback for job {job_id} to {url!r} refused: {error}",
                job_id=job_id,
                url=target.log_url,
                attempt=attempt,
                status=None,
                error=result.error,
                duration=round(duration, 6),
                state=delivery.state,
            )
            self._changed(job_id, delivery)
            return True
        delivery.attempts = attempt
        delivery.last_status = result.status
        delivery.last_error = result.error
        final = True
        if result.delivered:
            delivery.state = DELIVERY_DELIVERED
        elif result.retry and attempt < self._attempts:
            final = False
        else:
            delivery.state = DELIVERY_FAILED
        self._on_attempt(delivery.state if final else "retry")
        fields = dict(
            job_id=job_id,
            url=target.log_url,
            attempt=attempt,
            status=result.status,
            error=result.error,
            duration=round(duration, 6),
            state=delivery.state,
        )
        if result.delivered:
            _log.info(
                "callback for job {job_id} delivered to {url!r} on attempt {attempt} (HTTP {status})",
                **fields,
            )
        else:
            _log.warn(
                "callback for job {job_id} to {url!r} attempt {attempt} failed: {error}",
                **fields,
            )
        self._changed(job_id, delivery)
        return final

    async def _attempt(self, job_id: str, target: CallbackTarget, body: bytes) -> _Result:
        """One try: resolve, check every address, POST to a checked one. Never raises."""
        try:
            if target.address is not None:
                addresses: list[IPAddress] = [target.address]
            else:
                addresses = await resolve(self._reactor.nameResolver, target.host, target.port)
                if not addresses:
                    return _Result(error=f"could not resolve {target.host!r}", retry=True)
            for address in addresses:
                reason = self._guard.refusal(address, None if target.address is not None else target.host)
                if reason is not None:
                    return _Result(error=reason, refused=True)
            response = await self._http.post(target, addresses, self._headers(job_id, target, body), body)
            result = _classify_status(response.code)
            await read_limited(response, RESPONSE_READ_LIMIT)
            return result
        except Exception as e:
            text, network = _describe(e)
            if text == _TIMED_OUT:
                text = f"timed out after {self._timeout:g} s"
            if not network:
                _log.failure("callback for job {job_id}: unexpected error", Failure(), job_id=job_id)
            return _Result(error=text, retry=network)

    def _headers(self, job_id: str, target: CallbackTarget, body: bytes) -> Headers:
        now = self._reactor.seconds()  # wall clock: receivers compare with theirs
        headers = Headers()
        headers.addRawHeader(b"Host", target.authority.encode("ascii"))
        headers.addRawHeader(b"Content-Type", b"application/json")
        headers.addRawHeader(b"Accept", b"application/json")
        headers.addRawHeader(b"User-Agent", f"httprunner/{__version__}".encode())
        headers.addRawHeader(b"X-Notify-Timestamp", str(int(now * 1000)).encode())
        if self._secret is not None:
            seconds = int(now)
            headers.addRawHeader(b"webhook-id", job_id.encode("ascii", "replace"))
            headers.addRawHeader(b"webhook-timestamp", str(seconds).encode())
            headers.addRawHeader(
                b"webhook-signature",
                sign_webhook(self._secret, job_id, seconds, body).encode("ascii"),
            )
        return headers


# ---------------------------------------------------------------------------
# The runner observer


class CallbackJob(Protocol):
    """What :class:`CallbackOnFinish` needs of a job (``httprunner.jobs.Job``)."""

    @property
    def id(self) -> str: ...

    @property
    def callback(self) -> str | None: ...

    callback_delivery: CallbackDelivery | None

    def to_json_bytes(self) -> bytes: ...


class CallbackOnFinish:
    """A runner observer: the outbox of completion callbacks.

    When a job with a callback reaches its end, its delivery record starts
    ``pending``, so the store records it with the terminal state.  Once the
    store confirms that state (``job_recorded``; a cluster node that lost
    the job to a "lost" verdict is not told), the body is the job JSON at
    that moment, with the record ``pending`` and no attempt; every retry
    sends those same bytes, and a later ``GET`` shows the record as the
    notifier updates it (its ``on_change`` hands every change to the store).
    """

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def job_started(self, job: object, spawn_seconds: float) -> None:
        pass

    def job_finished(self, job: CallbackJob) -> None:
        if job.callback is not None:
            job.callback_delivery = CallbackDelivery()

    def job_recorded(self, job: CallbackJob) -> None:
        delivery = job.callback_delivery
        if job.callback is None or delivery is None:
            return
        self.notifier.deliver(job.id, job.callback, job.to_json_bytes(), delivery)

    def resume(self, job: CallbackJob) -> Deferred[CallbackDelivery] | None:
        """Go on with the callback of a finished job loaded from a store (the outbox).

        For a job whose record is still ``pending``; None for any other.
        The body is rebuilt as the first attempt sent it (the record in it
        ``pending`` with no attempt), so it is byte-identical as long as
        the job's other fields are as they were stored when it ended.
        """
        delivery = job.callback_delivery
        if job.callback is None or delivery is None or delivery.final:
            return None
        job.callback_delivery = CallbackDelivery()
        try:
            body = job.to_json_bytes()
        finally:
            job.callback_delivery = delivery
        return self.notifier.deliver(job.id, job.callback, body, delivery)
