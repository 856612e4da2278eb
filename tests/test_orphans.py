"""Finding a lost job's processes after a crash, with real processes."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time

from httprunner import orphans
from tests.conftest import alive


def test_a_jobs_process_groups_are_found_by_the_job_id_in_their_environment() -> None:
    job_id, other_id = secrets.token_hex(20), secrets.token_hex(20)
    env = dict(os.environ, HTTPRUNNER_JOB_ID=job_id)
    # A session of its own with a child (as the runner spawns jobs), and a
    # grandchild that moved to a process group of its own.
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & setsid sleep 60 & wait"], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            found = orphans.groups_of_jobs({job_id, other_id})
            if len(found.get(job_id, ())) == 2:
                break
            time.sleep(0.05)
        assert set(found) == {job_id}
        assert leader.pid in found[job_id] and len(found[job_id]) == 2
        for pgid in found[job_id]:
            os.killpg(pgid, signal.SIGKILL)
        leader.wait(10)
        deadline = time.monotonic() + 10
        while orphans.groups_of_jobs({job_id}) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert orphans.groups_of_jobs({job_id}) == {}
        assert not alive(leader.pid)
    finally:
        if leader.poll() is None:
            os.killpg(leader.pid, signal.SIGKILL)
            leader.wait(10)
