"""The command line: ``Options`` -> validated settings; ``makeService``.

Everything is parsed and checked in :class:`Options`, so a bad value is a
one-line usage error before anything starts.  :func:`makeService` only
composes the services; it imports the global reactor only when none is
given (tests pass a ``MemoryReactor``).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure

from httprunner import __version__, jobs
from httprunner.api import JobAPI, Limits
from httprunner.callbacks import CallbackDelivery, CallbackGuard, CallbackOnFinish, Notifier, load_callback_secret
from httprunner.cluster import ClusterNode
from httprunner.guard import ConfigError as GuardConfigError
from httprunner.guard import (
    GuardedResource,
    HostPolicy,
    TokenFile,
    install_reload_on_sighup,
    refuse_anonymous_exposure,
)
from httprunner.logtext import speed_up_text_log
from httprunner.metrics import Metrics
from httprunner.policy import ConfigError, Policy
from httprunner.runner import JobRunner, Settings
from httprunner.site import make_site
from httprunner.store import JobStore, MemoryJobStore, StoreError
from httprunner.store.postgres import SCHEMA_NAME, PostgresJobStore
from httprunner.store.sqlite import SQLiteJobStore

log = Logger(namespace="httprunner")

NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: how often finished jobs older than --max-age are evicted (seconds)
PRUNE_INTERVAL = 60.0

_SIZE = re.compile(r"(\d+)\s*([kmg]?)(i?b)?", re.IGNORECASE)


class StartupError(Exception):
    """A refusal to start: reported in one line, without a traceback."""


def parse_size(text: str) -> int:
    """``4194304``, ``4M``, ``64K``, ``1G`` (binary multiples) -> bytes."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(text)
    return int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()]


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` -> seconds (0: none)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def parse_store(text: str) -> tuple[str, str]:
    """``--store``: ``("memory", "")``, ``("sqlite", path)`` or ``("postgresql", uri)``."""
    if text == "memory":
        return "memory", ""
    if text.startswith("sqlite:"):
        path = text[len("sqlite:") :]
        if not path:
            raise usage.UsageError("--store sqlite:PATH needs a file path, like sqlite:/var/lib/httprunner/jobs.db")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise usage.UsageError("--store %s: the directory %s does not exist" % (text, directory))
        return "sqlite", path
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql", text
    raise usage.UsageError("--store must be memory, sqlite:PATH or postgresql://..., not %r" % text)


def _number(
    name: str, text: str, *, kind: Callable[[str], Any] = float, minimum: float = 0, maximum: float | None = None
) -> Any:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise usage.UsageError(
            "--%s: %r is not a %s" % (name, text, "whole number" if kind is int else "number")
        ) from None
    if value != value or value < minimum or (maximum is not None and value > maximum) or value == float("inf"):
        bound = ">= %s" % minimum if maximum is None else "between %s and %s" % (minimum, maximum)
        raise usage.UsageError("--%s: %r is out of range (must be %s)" % (name, text, bound))
    return value


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run commands on request over a small HTTP JSON API. "
        "Without --whitelist or --policy ANY command may run: only do that on a trusted, local listener."
    )

    optFlags = [
        ["allow-root", None, "Run even as uid 0 (otherwise use twistd --uid/--gid)."],
        ["allow-anonymous", None, "Listen on a non-loopback address without --token-file."],
        ["no-access-log", None, "Do not log a line per HTTP request (job events are still logged)."],
    ]
    optParameters = [
        ["port", "p", None, "TCP port to listen on (default 9000)."],
        ["interface", "i", None, "Address to listen on (default 127.0.0.1)."],
        ["whitelist", "w", None, "Comma-separated commands that may run (exact names or absolute paths)."],
        ["policy", None, None, "TOML policy file with per-command rules."],
        ["store", None, "memory", "Where jobs are kept: memory, sqlite:PATH, or postgresql://... (a cluster)."],
        ["max-jobs", "n", None, "Finished jobs kept (oldest evicted first); default 100, 10000 for a durable store."],
        ["max-age", None, "0", "Evict finished jobs older than this (30m, 12h, 7d; 0: no age limit)."],
        ["node", None, None, "Cluster: this node's name, unique among live nodes (default: the host name)."],
        ["heartbeat", None, None, "Cluster: seconds between heartbeats (default 5); 3 missed: declared dead."],
        ["store-schema", None, None, "Cluster: the PostgreSQL schema of the tables (default httprunner)."],
        ["max-running", None, "32", "Jobs running at once."],
        ["max-queued", None, "1000", "Jobs waiting for a slot (0: no queue); beyond it 503."],
        ["timeout", None, "0", "Default job timeout in seconds (0: none)."],
        ["max-timeout", None, "0", "Largest timeout a job may have, in seconds (0: no ceiling)."],
        ["kill-grace", None, "5", "Seconds between TERM and KILL."],
        ["max-output", None, "4M", "Bytes of output kept per stream (head + tail), K/M/G suffixes."],
        ["on-output-limit", None, "truncate", "truncate (keep running, drop the middle) or kill."],
        ["max-body", None, "64K", "Largest request body."],
        ["max-wait", None, "300", "Longest long-poll (?wait=) in seconds."],
        ["request-timeout", None, "30", "Seconds a client has to send a whole request."],
        ["idle-timeout", None, "60", "Seconds an idle keep-alive connection stays open."],
        ["max-connections", None, "1024", "Open HTTP connections in all."],
        ["max-connections-per-peer", None, "128", "Open HTTP connections per client address."],
        ["token-file", None, None, "File of bearer tokens, one per line (re-read on SIGHUP)."],
        ["callback-secret-file", None, None, "Secret for signing callbacks (Standard Webhooks)."],
        ["callback-attempts", None, "3", "Attempts per callback."],
        ["callback-timeout", None, "10", "Seconds per callback attempt."],
        ["max-callbacks-in-flight", None, "32", "Callback deliveries at once."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["pass_env"] = []
        self["allow_env"] = []
        self["allowed_host"] = []
        self["allowed_origin"] = []
        self["callback_allow"] = []

    def opt_listen(self, description: str) -> None:
        """Listen on a Twisted endpoint (tcp:, tcp6:, ssl:, unix:, systemd:); repeatable."""
        try:
            serverFromString(MemoryReactor(), description)
        except Exception as e:
            raise usage.UsageError("--listen %r: %s" % (description, e)) from None
        self["listen"].append(description)

    def opt_pass_env(self, name: str) -> None:
        """Pass this daemon environment variable to jobs; repeatable."""
        self["pass_env"].append(name)

    def opt_allow_env(self, name: str) -> None:
        """Let requests set this environment variable; repeatable."""
        self["allow_env"].append(name)

    def opt_allowed_host(self, name: str) -> None:
        """Accept this Host header name (DNS rebinding defence); repeatable."""
        self["allowed_host"].append(name)

    def opt_allowed_origin(self, origin: str) -> None:
        """Accept requests from this browser Origin; repeatable."""
        self["allowed_origin"].append(origin)

    def opt_callback_allow(self, target: str) -> None:
        """Allow callbacks to this host or CIDR; repeatable."""
        self["callback_allow"].append(target)

    def opt_version(self) -> None:
        print("httprunner", __version__)
        sys.exit(0)

    def postOptions(self) -> None:
        self["store_kind"], self["store_target"] = parse_store(self["store"])
        default_jobs = "100" if self["store_kind"] == "memory" else "10000"
        self["max_jobs"] = _number("max-jobs", self["max-jobs"] or default_jobs, kind=int, minimum=1)
        cluster = {"node": self["node"], "heartbeat": self["heartbeat"], "store-schema": self["store-schema"]}
        if self["store_kind"] != "postgresql":
            given = [name for name, value in cluster.items() if value is not None]
            if given:
                raise usage.UsageError("--%s applies only to a cluster (--store postgresql://...)" % given[0])
        self["node_name"] = self["node"] or socket.gethostname()
        if not NODE_NAME.fullmatch(self["node_name"]):
            raise usage.UsageError(
                "--node %r: use letters, digits, '.', '_' and '-' (at most 63 characters)" % self["node_name"]
            )
        self["heartbeat_s"] = _number("heartbeat", self["heartbeat"] or "5", minimum=0.1, maximum=3600)
        self["schema"] = self["store-schema"] or "httprunner"
        if not SCHEMA_NAME.fullmatch(self["schema"]):
            raise usage.UsageError(
                "--store-schema %r: use lowercase letters, digits and '_', starting with a letter or '_'"
                % self["schema"]
            )
        try:
            self["max_age"] = parse_duration(self["max-age"])
        except ValueError:
            raise usage.UsageError(
                "--max-age: %r is not a duration (like 90s, 30m, 12h, 7d, or 0 for none)" % self["max-age"]
            ) from None
        self["max_running"] = _number("max-running", self["max-running"], kind=int, minimum=1)
        self["max_queued"] = _number("max-queued", self["max-queued"], kind=int, minimum=0)
        self["timeout_s"] = _number("timeout", self["timeout"])
        self["max_timeout"] = _number("max-timeout", self["max-timeout"])
        if self["max_timeout"] and self["timeout_s"] > self["max_timeout"]:
            raise usage.UsageError("--timeout %s is over --max-timeout %s" % (self["timeout"], self["max-timeout"]))
        self["kill_grace"] = _number("kill-grace", self["kill-grace"])
        self["max_wait"] = _number("max-wait", self["max-wait"])
        self["request_timeout"] = _number("request-timeout", self["request-timeout"], minimum=0.001)
        self["idle_timeout"] = _number("idle-timeout", self["idle-timeout"], minimum=0.001)
        self["max_connections"] = _number("max-connections", self["max-connections"], kind=int, minimum=1)
        self["max_connections_per_peer"] = _number(
            "max-connections-per-peer", self["max-connections-per-peer"], kind=int, minimum=1
        )
        self["callback_attempts"] = _number("callback-attempts", self["callback-attempts"], kind=int, minimum=1)
        self["callback_timeout"] = _number("callback-timeout", self["callback-timeout"], minimum=0.001)
        self["max_callbacks"] = _number("max-callbacks-in-flight", self["max-callbacks-in-flight"], kind=int, minimum=1)
        for name in ("max-output", "max-body"):
            try:
                self[name.replace("-", "_")] = parse_size(self[name])
            except ValueError:
                raise usage.UsageError("--%s: %r is not a size (like 4194304, 64K, 4M)" % (name, self[name])) from None
            if self[name.replace("-", "_")] < 1:
                raise usage.UsageError("--%s must be at least 1 byte" % name)
        if self["on-output-limit"] not in ("truncate", "kill"):
            raise usage.UsageError("--on-output-limit must be truncate or kill, not %r" % self["on-output-limit"])
        self["endpoints"] = self._endpoints()
        whitelist = None
        if self["whitelist"] is not None:
            whitelist = [name.strip() for name in self["whitelist"].split(",") if name.strip()]
            if not whitelist:
                raise usage.UsageError("--whitelist is empty")
        try:
            self["policy_obj"] = Policy.from_options(
                whitelist=whitelist,
                policy_file=self["policy"],
                pass_env=self["pass_env"],
                allow_env=self["allow_env"],
            )
            self["tokens"] = TokenFile(self["token-file"]) if self["token-file"] else None
            self["hosts"] = HostPolicy.from_listeners(self["endpoints"], self["allowed_host"], self["allowed_origin"])
            self["callback_guard"] = CallbackGuard(self["callback_allow"])
            secret_file = self["callback-secret-file"]
            self["callback_secret"] = load_callback_secret(secret_file) if secret_file else None
            refuse_anonymous_exposure(
                self["endpoints"], has_tokens=self["tokens"] is not None, allow_anonymous=self["allow-anonymous"]
            )
        except (ConfigError, GuardConfigError, ValueError, OSError) as e:
            raise usage.UsageError(str(e)) from None

    def _endpoints(self) -> list[str]:
        endpoints = list(self["listen"])
        if not endpoints or self["port"] is not None or self["interface"] is not None:
            port = _number("port", self["port"] or "9000", kind=int, minimum=0, maximum=65535)
            interface = self["interface"] or "127.0.0.1"
            if ":" in interface:
                endpoints.append("tcp6:port=%d:interface=%s" % (port, interface.replace(":", "\\:")))
            else:
                endpoints.append("tcp:port=%d:interface=%s" % (port, interface))
            try:
                serverFromString(MemoryReactor(), endpoints[-1])
            except Exception as e:
                raise usage.UsageError("--interface %r: %s" % (interface, e)) from None
        return endpoints


class DaemonService(MultiService):
    """The top service: refuses to start in one line instead of a traceback.

    twistd binds listeners in ``privilegedStartService`` (before dropping
    privileges) and runs ``startService`` after, so the root check lives
    in ``startService``: it sees the uid the daemon really runs as.
    """

    def __init__(
        self,
        *,
        reactor: Any,
        allow_root: bool,
        warnings: list[str],
        endpoints: list[str],
        open_store: Callable[[], None] = lambda: None,
        store_description: str = "memory",
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.allow_root = allow_root
        self.warnings = warnings
        self.endpoints = endpoints
        #: opens the store and takes over what it kept (StoreError: refuse)
        self.open_store = open_store
        self.store_description = store_description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise _refuse("cannot listen on %s:%s: %s" % (e.interface or "*", e.port, e.socketError)) from None

    def startService(self) -> None:
        if os.getuid() == 0 and not self.allow_root:
            raise _refuse("refusing to run as root: use twistd --uid/--gid to drop privileges, or --allow-root")
        # twistd began logging before starting us: its text log gets the
        # same lines for a fraction of the CPU (see logtext).
        speed_up_text_log(globalLogPublisher)
        for warning in self.warnings:
            log.warn("{warning}", warning=warning)
        try:
            # After --uid/--gid dropped privileges: the files are the daemon's.
            self.open_store()
        except StoreError as e:
            raise _refuse(str(e)) from None
        super().startService()
        log.info(
            "httprunner {version} listening on {endpoints}, jobs kept in {store}; the dashboard is at /ui/",
            version=__version__,
            endpoints=self.endpoints,
            store=self.store_description,
        )

    def stopService(self) -> Any:
        """Stop the children one after the other, last added first.

        (``MultiService`` stops them all at once.)  Each step needs the
        previous one done: the listeners stop taking requests, the runner
        ends every job, pending callbacks get their moment, and only then
        does the store record what is left and close.
        """
        Service.stopService(self)
        d: Deferred[Any] = succeed(None)
        for child in reversed(list(self)):
            d.addCallback(_stop_child, child)
            d.addErrback(_stop_failed, child)

        def stopped(result: Any) -> Any:
            # twistd re-raises the signal that stopped the reactor so the
            # exit status shows it; a shutdown that ended every job cleanly
            # exits 0 instead, as the docs promise.
            if getattr(self.reactor, "_exitSignal", None) in (signal.SIGTERM, signal.SIGINT):
                self.reactor._exitSignal = None
            log.info("httprunner stopped: every job ended")
            return result

        return d.addCallback(stopped)


def _stop_child(_: object, child: Any) -> Any:
    return child.stopService()


def _stop_failed(failure: Failure, child: Any) -> None:
    log.failure("stopping {service!r} failed", failure, service=child)


def _refuse(message: str) -> StartupError:
    log.critical("{message}", message=message)
    return StartupError(message)


def _quiet_startup_errors(previous: Callable[..., Any]) -> Callable[..., Any]:
    """An excepthook that prints a StartupError as one line, no traceback."""

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if isinstance(value, StartupError):
            # sys.stderr is twistd's log by now: write to the real stderr.
            stream = sys.__stderr__ or sys.stderr
            stream.write("httprunner: %s\n" % value)
        else:
            previous(kind, value, tb)

    return hook


class _StoreService(Service):
    """Stops last: lets the store record every pending write, then closes it."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def stopService(self) -> Any:
        super().stopService()
        return self.store.close()


class _Shutdown(Service):
    """Gives pending callbacks a bounded moment after the jobs ended."""

    def __init__(self, notifier: Notifier, grace: float) -> None:
        self.notifier = notifier
        self.grace = grace

    def stopService(self) -> Any:
        super().stopService()
        return self.notifier.stop(grace=self.grace)


def make_store(options: Options, reactor: Any) -> JobStore:
    """The store ``--store`` names, not opened yet."""
    kind = options["store_kind"]
    if kind == "postgresql":
        return PostgresJobStore(
            options["store_target"],
            reactor=reactor,
            node=options["node_name"],
            schema=options["schema"],
            heartbeat=options["heartbeat_s"],
            max_finished=options["max_jobs"],
            max_queued=options["max_queued"],
            max_running=options["max_running"],
            max_output=options["max_output"],
            delivery_factory=CallbackDelivery.from_json,
            version=__version__,
        )
    if kind == "sqlite":
        return SQLiteJobStore(
            options["store_target"],
            reactor=reactor,
            max_finished=options["max_jobs"],
            max_output=options["max_output"],
            delivery_factory=CallbackDelivery.from_json,
        )
    return MemoryJobStore(options["max_jobs"])


def _prune(store: JobStore, max_age: float) -> None:
    """Evict finished jobs older than ``--max-age``."""

    def pruned(count: int) -> None:
        if count:
            log.info("evicted {count} finished jobs older than {max_age}s", count=count, max_age=max_age)

    store.prune(time.time() - max_age).addCallbacks(pruned, lambda f: log.failure("evicting old jobs failed", f))


def makeService(options: Options, reactor: Any = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    sys.excepthook = _quiet_startup_errors(sys.excepthook)
    policy = options["policy_obj"]
    store = make_store(options, reactor)
    runner = JobRunner(
        reactor=reactor,
        store=store,
        settings=Settings(
            max_running=options["max_running"],
            max_queued=options["max_queued"],
            max_output=options["max_output"],
            kill_grace=options["kill_grace"],
            kill_on_output_limit=options["on-output-limit"] == "kill",
        ),
    )
    metrics = Metrics(runner, store=store)
    notifier = Notifier(
        reactor,
        on_attempt=metrics.callback_attempt,
        guard=options["callback_guard"],
        secret=options["callback_secret"],
        attempts=options["callback_attempts"],
        timeout=options["callback_timeout"],
        max_in_flight=options["max_callbacks"],
        # The outbox: every change of a record goes to the store, and a
        # durable store keeps what a shutdown cut short pending, to resume.
        on_change=lambda job_id, delivery: store.delivery_changed(job_id, dict(delivery.to_json())),
        abandon_as_pending=store.durable,
    )
    outbox = CallbackOnFinish(notifier)
    runner.observers.append(metrics)
    runner.observers.append(outbox)
    api = JobAPI(
        runner=runner,
        store=store,
        policy=policy,
        callback_guard=options["callback_guard"],
        metrics=metrics,
        limits=Limits(
            default_timeout=options["timeout_s"] or None,
            max_timeout=options["max_timeout"] or None,
            max_wait=options["max_wait"],
        ),
    )
    resource = GuardedResource(api.resource(), tokens=options["tokens"], hosts=options["hosts"])
    site = make_site(
        resource,
        reactor=reactor,
        max_body=options["max_body"],
        request_timeout=options["request_timeout"],
        idle_timeout=options["idle_timeout"],
        max_connections=options["max_connections"],
        max_connections_per_peer=options["max_connections_per_peer"],
        on_request=metrics.http_request,
        access_log=not options["no-access-log"],
    )

    def open_store() -> None:
        recovery = store.open()
        runner.recover(recovery, api.admission.respec)
        if recovery.lost:
            # Declared lost by this start: counted as finished "lost", so
            # that an alert on the counter sees the crash.
            metrics.jobs_finished.labels(jobs.LOST).inc(len(recovery.lost))
        for job in recovery.deliveries:
            outbox.resume(job)

    top = DaemonService(
        reactor=reactor,
        allow_root=options["allow-root"],
        warnings=policy.warnings,
        endpoints=options["endpoints"],
        open_store=open_store,
        store_description=store.description,
    )
    # MultiService stops children in reverse order: listeners first (stop
    # accepting), then the runner (end the jobs), then pending callbacks,
    # then the store (record what is left, close).
    _StoreService(store).setServiceParent(top)
    if isinstance(store, PostgresJobStore):
        # The cluster prunes its shared history itself, one node at a time.
        ClusterNode(
            store=store,
            runner=runner,
            resolve=api.admission.respec,
            commands=policy.command_names,
            outbox=outbox,
            reactor=reactor,
            max_age=options["max_age"],
        ).setServiceParent(top)
    elif options["max_age"]:
        retention = TimerService(PRUNE_INTERVAL, _prune, store, options["max_age"])
        retention.clock = reactor
        retention.setServiceParent(top)
    _Shutdown(notifier, grace=5.0).setServiceParent(top)
    runner.setServiceParent(top)
    if options["tokens"] is not None:
        install_reload_on_sighup(reactor, options["tokens"])
    for description in options["endpoints"]:
        strports.service(description, site, reactor=reactor).setServiceParent(top)
    return top
