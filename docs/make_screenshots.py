"""Take the dashboard screenshots of docs/images/ with the browser the tests use.

Starts a ``twistd -n httprunner`` child on a free loopback port with a few
demo commands on its ``PATH``, submits jobs that end in different ways,
and photographs the jobs view and a job's view, light and dark, with
Playwright driving Debian's Chromium (``/usr/bin/chromium``)::

    venv/bin/python docs/make_screenshots.py

Needs what the browser tests need (``apt-get install chromium``; the
``playwright`` package of the ``test`` extra).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Demo programs: what their output looks like is the point, not what they do.
DEMO = {
    "run-tests": r"""#!/bin/sh
printf '\033[1mcollected 48 items\033[0m\n\n'
for suite in api store runner guard web; do
  printf 'tests/test_%s.py \033[32m..........\033[0m\n' "$suite"
done
printf '\n\033[32m======== 48 passed in 3.21s ========\033[0m\n'
""",
    "backup-db": r"""#!/bin/sh
echo "dumping database 'orders' to /var/backups/orders.sql.zst"
for p in 0 12 27 41 58 73 86 100; do printf '\r%3d%% [%-20s]' "$p" "$(printf '%*s' $((p / 5)) '' | tr ' ' '#')"; done
printf '\n\033[32mdone\033[0m: 1.8 GiB in 42 s\n'
""",
    "deploy": r"""#!/bin/sh
printf '\033[1;34m==>\033[0m building image web:2026.11.30\n'
printf '\033[1;34m==>\033[0m pushing to registry.internal:5000\n'
printf '    layer 1/3 \033[32mpushed\033[0m\n    layer 2/3 \033[32mpushed\033[0m\n    layer 3/3 \033[33mretrying\033[0m\n'
printf '\033[1;34m==>\033[0m rolling out to 4 hosts\n'
printf '    web-1 \033[32mok\033[0m\n    web-2 \033[32mok\033[0m\n    web-3 \033[31mhealth check failed\033[0m\n'
printf '\033[1;31merror:\033[0m web-3 did not become healthy in 30 s; rolling back\n' >&2
printf 'rollback: web-1 web-2 restored to web:2026.11.29\n' >&2
exit 1
""",
    "render-report": r"""#!/bin/sh
echo "rendering monthly report (November)"
i=0
while [ $i -lt 600 ]; do i=$((i + 1)); printf 'page %d of 600\n' "$i"; sleep 0.5; done
""",
    "sync-assets": r"""#!/bin/sh
echo "syncing s3://assets -> /srv/assets"
sleep 30
""",
}

JOBS: list[dict[str, Any]] = [
    {"command": "run-tests", "args": ["--all"]},
    {"command": "backup-db", "args": ["orders", "--compress", "zstd"]},
    {"command": "sync-assets", "args": ["--delete"], "timeout": 1},
    {"command": "run-tests", "args": ["tests/test_web.py"]},
    {"command": "no-such-tool", "args": ["--help"]},
    {"command": "deploy", "args": ["web", "--env", "production"]},
    {"command": "render-report", "args": ["--month", "2026-11"]},
]


def api(base: str, method: str, path: str, document: Any = None) -> Any:
    data = None if document is None else json.dumps(document).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_daemon(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    for name, script in DEMO.items():
        path = bin_dir / name
        path.write_text(script)
        path.chmod(0o755)
    log = workdir / "twistd.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH="%s:/usr/local/bin:/usr/bin:/bin" % bin_dir)
    twistd = Path(sys.executable).with_name("twistd")
    argv = [str(twistd), "-n", "--pidfile=", "--logfile", str(log), "httprunner"]
    # The README's port when it is free, so the curl command shown is the usual one.
    port = 9000 if _free(9000) else 0
    argv += ["--listen", "tcp:%d:interface=127.0.0.1" % port, "--kill-grace", "1"]
    if os.getuid() == 0:
        argv.append("--allow-root")
    process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for _ in range(300):
        text = log.read_text(errors="replace") if log.exists() else ""
        found = re.search(r"starting on (\d+)", text)
        if found:
            return process, "http://127.0.0.1:%s" % found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise SystemExit("the daemon did not start:\n" + (log.read_text() if log.exists() else ""))


def shoot(page: Page, url: str, name: str, ready: str) -> None:
    page.goto(url)
    page.locator(ready).first.wait_for()
    page.wait_for_timeout(2500)  # a refresh, so the running job's duration has ticked
    path = IMAGES / name
    page.screenshot(path=str(path))
    print("%s: %d KiB" % (path.relative_to(ROOT), path.stat().st_size // 1024))


def main() -> None:
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        process, base = start_daemon(Path(tmp))
        try:
            ids = {}
            for job in JOBS:
                ids[job["command"]] = api(base, "POST", "/", job)["id"]
                time.sleep(0.3)
            time.sleep(2)  # sync-assets times out, the rest end
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                for scheme in ("light", "dark"):
                    context = browser.new_context(
                        viewport={"width": 1100, "height": 560}, color_scheme=scheme, device_scale_factor=1
                    )
                    page = context.new_page()
                    shoot(page, base + "/ui/", "dashboard-jobs-%s.png" % scheme, "tbody tr")
                    page.set_viewport_size({"width": 1100, "height": 900})
                    shoot(
                        page, base + "/ui/#/job/" + ids["deploy"], "dashboard-job-%s.png" % scheme, ".pane-stderr .line"
                    )
                    context.close()
                browser.close()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


if __name__ == "__main__":
    main()
