"""Compare two benchmark result files (before/after a change).

    python benchmarks/compare.py before.json after.json

Prints every metric median side by side with the change in percent, and
marks whether the change is in the better direction (throughput up;
latency, memory and CPU down).  Differences within the spread of the
rounds (min..max of either run) are marked ``~`` (noise).
"""

from __future__ import annotations

import json
import sys

#: metrics where a smaller number is better
LOWER_IS_BETTER = ("_ms", "_bytes", "_mib", "_percent", "_slowdown", "cpu_ms", "_seconds")


def lower_is_better(key: str) -> bool:
    return any(part in key for part in LOWER_IS_BETTER)


def compare(before: dict, after: dict) -> str:
    lines = [
        "before: commit %s (%s), daemons from %s"
        % (
            before["machine"].get("commit"),
            before["machine"].get("uncommitted_changes", "?"),
            before["machine"].get("daemon_pythonpath", "?"),
        ),
        "after:  commit %s (%s), daemons from %s"
        % (
            after["machine"].get("commit"),
            after["machine"].get("uncommitted_changes", "?"),
            after["machine"].get("daemon_pythonpath", "?"),
        ),
        "",
        "%-44s %12s %12s %9s  %s" % ("metric (medians)", "before", "after", "change", "verdict"),
    ]
    for key in sorted(set(before["metrics"]) | set(after["metrics"])):
        a = before["metrics"].get(key)
        b = after["metrics"].get(key)
        if a is None or b is None:
            lines.append("%-44s %12s %12s" % (key, "-" if a is None else "%.2f" % a, "-" if b is None else "%.2f" % b))
            continue
        change = (b - a) / a * 100 if a else 0.0
        sa, sb = before["samples"][key], after["samples"][key]
        overlap = max(min(sa), min(sb)) <= min(max(sa), max(sb))
        better = (change < 0) if lower_is_better(key) else (change > 0)
        verdict = "~" if overlap else ("better" if better else "WORSE")
        lines.append("%-44s %12.2f %12.2f %+8.1f%%  %s" % (key, a, b, change, verdict))
    lines.append("")
    lines.append("%-46s %-14s %-14s" % ("target", "before", "after"))
    old = {t[0]: t for t in before.get("targets", [])}
    for name, measured, bound, met in after.get("targets", []):
        prev = old.get(name)
        was = "%s %s" % (prev[1], "ok" if prev[3] else "NO") if prev else "-"
        lines.append("%-46s %-14s %-14s %s" % (name, was, "%s %s" % (measured, "ok" if met else "NO"), bound))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        before = json.load(f)
    with open(argv[1]) as f:
        after = json.load(f)
    print(compare(before, after))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
