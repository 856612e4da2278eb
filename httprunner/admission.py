"""From a validated request to what runs: callback check, policy, timeout, sizes.

The API builds a :class:`JobSpec` from each ``POST /``; after a restart a
durable store's queued jobs are built again from their stored requests,
under the policy the daemon has then (a command removed from the
whitelist meanwhile does not run).
"""

from __future__ import annotations

import base64
import os
from typing import Any

import attrs

from httprunner.callbacks import CallbackGuard, CallbackURLError, check_callback_url
from httprunner.jobs import JobSpec
from httprunner.parsing import JobRequest, RequestError
from httprunner.policy import Policy, PolicyError
from httprunner.store.base import Stored

#: Linux refuses a single argv/env string longer than 32 pages
MAX_ARG_STRLEN = 32 * 4096


@attrs.frozen
class Limits:
    default_timeout: float | None = None
    max_timeout: float | None = None
    max_wait: float = 300.0
    retry_after: int = 1
    arg_max: int = attrs.field(factory=lambda: os.sysconf("SC_ARG_MAX"))


class Admission:
    """Turns requests into job specs; raises RequestError with the status."""

    def __init__(self, policy: Policy, limits: Limits, callback_guard: CallbackGuard | None = None) -> None:
        self.policy = policy
        self.limits = limits
        self.callback_guard = callback_guard

    def spec(self, req: JobRequest) -> JobSpec:
        """Check the callback, ask the policy, settle the timeout and sizes."""
        try:
            callback = check_callback_url(req.callback, self.callback_guard or CallbackGuard())
        except CallbackURLError as e:
            raise RequestError("callback: %s" % e) from None
        try:
            resolved = self.policy.resolve(req.command, req.args, req.env)
        except PolicyError as e:
            raise RequestError(e.message, e.status) from None
        timeout = self._timeout(req.timeout, resolved.timeout, resolved.max_timeout)
        self._check_exec_size(resolved.program, resolved.args, resolved.env)
        return JobSpec(
            command=req.command,
            arguments=req.args,
            program=resolved.program,
            args=tuple(resolved.args),
            env=resolved.env,
            cwd=resolved.cwd,
            stdin=req.stdin,
            timeout=timeout,
            callback=callback,
            rule=resolved.rule,
            rule_limit=resolved.max_running,
            request_env=dict(req.env),
            requested_timeout=req.timeout,
            node=req.node,
        )

    def respec(self, stored: Stored) -> JobSpec:
        """The spec of a job kept queued across a restart (RequestError if
        it may no longer run); the job's id stays in its environment."""
        job = stored.job
        record = stored.request or {}
        stdin = record.get("stdin")
        req = JobRequest(
            command=job.command,
            args=list(job.arguments),
            callback=job.callback,
            timeout=record.get("timeout"),
            stdin=None if stdin is None else base64.b64decode(stdin),
            env=dict(record.get("env") or {}),
            node=record.get("node"),
        )
        spec = self.spec(req)
        return attrs.evolve(spec, env={**spec.env, "HTTPRUNNER_JOB_ID": job.id})

    def _timeout(self, requested: float | None, rule_default: float | None, rule_max: float | None) -> float | None:
        """The effective timeout: request, else policy default, else server default.

        A policy command's own ``max_timeout`` replaces the server's
        ``--max-timeout`` (a backup may be allowed hours where the default
        ceiling is minutes); a request over the ceiling is refused.
        """
        ceiling = rule_max or self.limits.max_timeout
        if requested is not None and ceiling is not None and requested > ceiling:
            raise RequestError("timeout %g is over the maximum of %g seconds" % (requested, ceiling))
        effective = requested or rule_default or self.limits.default_timeout
        if effective and ceiling is not None:
            effective = min(effective, ceiling)
        return effective or None

    def _check_exec_size(self, program: str, args: Any, env: dict[str, str]) -> None:
        """Refuse what execve would refuse with E2BIG, before spawning."""
        total = len(program.encode()) + 1
        for arg in args:
            size = len(arg.encode()) + 1
            if size > MAX_ARG_STRLEN:
                raise RequestError(
                    "an argument is %d bytes, over the system's %d-byte limit" % (size - 1, MAX_ARG_STRLEN - 1)
                )
            total += size + 8
        for name, value in env.items():
            size = len(name.encode()) + len(value.encode()) + 2
            if size > MAX_ARG_STRLEN:
                raise RequestError("environment variable %s is over the system's size limit" % name)
            total += size + 8
        if total > self.limits.arg_max - 4096:
            raise RequestError(
                "arguments and environment total %d bytes, over the system's limit of %d" % (total, self.limits.arg_max)
            )
