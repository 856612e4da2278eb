"""Proving that a pid still names the process a job started, after a crash.

A daemon that dies without ending its jobs (SIGKILL, OOM, power loss)
leaves their process groups running unsupervised.  At the next start the
store names the jobs that were running; their pids may have been reused
since.  At spawn the runner records the process's start time (field 22 of
``/proc/<pid>/stat``, clock ticks since boot) and the boot id: a pid whose
start time and boot id still match is the same process, and only then is
its group signalled.

A daemon can also die between a spawn and the write that records it: the
job is then lost with no pid.  Every job's environment names it
(``HTTPRUNNER_JOB_ID``, a random 160-bit id), so its processes are found
by their environment instead: that proves them the job's just as well.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Collection

Identity = tuple[int, str]

#: the variable that names the job in every job's environment
JOB_ID_VARIABLE = b"HTTPRUNNER_JOB_ID="


@functools.cache
def boot_id() -> str:
    """This boot's id (changes at every reboot)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot, or None."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split
    # after its last ")".  Field 22 is the 20th after it.
    fields = stat.rsplit(b")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def identity(pid: int) -> Identity | None:
    """What identifies process ``pid`` across pid reuse, or None if gone."""
    started = start_time(pid)
    if started is None:
        return None
    return started, boot_id()


def same_process(pid: int, recorded: Identity | None) -> bool:
    """True when ``pid`` is alive and is the process ``recorded`` describes."""
    if recorded is None or not boot_id() or recorded[1] != boot_id():
        return False
    return identity(pid) == recorded


def signal_group(pgid: int, signum: int, killpg: Callable[[int, int], None] = os.killpg) -> bool:
    """Signal a process group; False if it is gone (or not ours)."""
    try:
        killpg(pgid, signum)
    except OSError as e:
        if e.errno in (errno.ESRCH, errno.EPERM):
            return False
        raise
    return True


def groups_of_jobs(job_ids: Collection[str], proc: str = "/proc") -> dict[str, set[int]]:
    """The process groups of the live processes whose environment names one
    of ``job_ids``, by job id (only processes this user may read)."""
    wanted = {job_id.encode("ascii") for job_id in job_ids}
    found: dict[str, set[int]] = {}
    own_group = os.getpgrp()
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open("%s/%s/environ" % (proc, name), "rb") as f:
                environ = f.read()
            with open("%s/%s/stat" % (proc, name), "rb") as f:
                stat = f.read()
        except OSError:
            continue
        job_id = next((v[len(JOB_ID_VARIABLE) :] for v in environ.split(b"\0") if v.startswith(JOB_ID_VARIABLE)), None)
        if job_id not in wanted:
            continue
        # After the command name (see start_time): state, ppid, pgrp.
        fields = stat.rsplit(b")", 1)[-1].split()
        try:
            state, pgid = fields[0], int(fields[2])
        except (IndexError, ValueError):
            continue
        if state not in (b"Z", b"X") and pgid > 1 and pgid != own_group:
            assert job_id is not None
            found.setdefault(job_id.decode("ascii"), set()).add(pgid)
    return found
