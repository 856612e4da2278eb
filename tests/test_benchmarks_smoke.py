"""Smoke test of the benchmark harness: ``benchmarks/run.py --quick``.

The harness starts its own ``twistd -n httprunner`` daemons on free
loopback ports (with ``--allow-root`` when run as root) and its baselines,
and writes a JSON result.  This checks that every metric is there with a
positive number and that the compare tool reads it back; it asserts no
timing (the numbers belong in benchmarks/RESULTS.md, not in a test).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

METRICS = [
    "baseline_spawn_c1_jobs_per_s",
    "baseline_spawn_c16_jobs_per_s",
    "baseline_klein_get_c16_rps",
    "baseline_klein_get_c64_rps",
    *("baseline_klein_post_c%d_%s" % (c, m) for c in (1, 16, 64) for m in ("rps", "p99_ms")),
    *(
        "submit_%s_c%d_%s" % (cmd, c, m)
        for cmd in ("echo", "true")
        for c in (1, 16, 64)
        for m in ("rps", "p50_ms", "p99_ms")
    ),
    "e2e_poll_jobs_per_s",
    "e2e_longpoll_jobs_per_s",
    "e2e_callback_jobs_per_s",
    *("get_%s_retained_c%d_rps" % (n, c) for n in ("1", "many") for c in (16, 64)),
    "rss_per_retained_job_bytes",
    "output_100mb_peak_rss_over_idle_mib",
    "flood_after_cap_daemon_cpu_percent",
    "slow_writer_after_cap_slowdown",
    "server_cpu_ms_per_job",
    "server_cpu_ms_per_job_polled",
    "output_100mb_seconds",
]
#: measured on the Node original when node (and its peer) is there
NODE_METRICS = ["node_e2e_poll_jobs_per_s", "node_e2e_callback_jobs_per_s", "node_cpu_ms_per_job_polled"]


def test_quick_run_reports_every_metric_and_compares(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    run = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--silent", "--store", "sqlite", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    result = json.loads(out.read_text())
    expected = list(METRICS)
    if shutil.which("webhook"):
        expected.append("webhook_sync_jobs_per_s")
    node_skipped = [note for note in result["notes"] if note.startswith("Node original skipped")]
    if not node_skipped:
        expected += NODE_METRICS
    else:
        # a run without the original says why, and prints it
        assert node_skipped[0] in run.stdout
    # a store variant runs side by side, or is skipped with a note by a
    # daemon that does not know --store yet
    if "variant sqlite skipped: this httprunner does not know --store" not in result["notes"]:
        expected += [
            "e2e_poll_jobs_per_s@sqlite",
            "server_cpu_ms_per_job_polled@sqlite",
            "get_1_retained_c16_rps@sqlite",
        ]
    missing = [key for key in expected if key not in result["metrics"]]
    assert missing == []
    not_positive = {key: result["metrics"][key] for key in expected if not result["metrics"][key] > 0}
    assert not_positive == {}
    # every accepted job ran and gave the right answer
    assert result["checks"]["spawn_failed_jobs"] == 0
    assert result["checks"]["wrong_results"] == 0
    assert result["machine"]["nproc"] >= 1 and result["machine"]["quick"] is True
    assert {t[0] for t in result["targets"]} >= {"submit p99 at 64 connections", "RSS per retained finished job"}
    # the table printed is the one in the file
    assert "rss_per_retained_job_bytes" in run.stdout

    compared = subprocess.run(
        [sys.executable, str(BENCH / "compare.py"), str(out), str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "e2e_poll_jobs_per_s" in compared.stdout and "WORSE" not in compared.stdout
