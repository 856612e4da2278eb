"""Peers measured side by side with httprunner: the Node.js original.

The original program (tieleman's ``http-runner``, which httprunner
re-implements) lives in ``../shared/peers/node-http-runner`` next to the
checkout.  The harness installs it into a cache directory *outside* the
repository (``$XDG_CACHE_HOME/httprunner-bench/``, default ``~/.cache``)
with ``npm install`` (its one dependency, optimist, from the npm registry)
and starts it on a free loopback port.  Nothing of it is copied into the
project.  Without ``node``/``npm``, or without the peer's directory, the
harness skips it and says why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
#: where the lead's notes put the peer: ``shared/`` beside the checkout
DEFAULT_NODE_PEER = os.path.normpath(os.path.join(CHECKOUT, "..", "shared", "peers", "node-http-runner"))


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "httprunner-bench")


def _fingerprint(source: str) -> str:
    """A digest of the peer's files, so a changed peer is installed anew."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d != "node_modules")
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, source).encode() + b"\0")
            with open(path, "rb") as f:
                digest.update(f.read() + b"\0")
    return digest.hexdigest()[:12]


def _make_writable(tree: str) -> None:
    # shared/ is read-only; npm must write node_modules into the copy.
    for root, dirs, files in os.walk(tree):
        for name in dirs + files:
            path = os.path.join(root, name)
            os.chmod(path, os.stat(path).st_mode | stat.S_IWUSR)
    os.chmod(tree, os.stat(tree).st_mode | stat.S_IWUSR)


def install_node_peer(source: str, say: Callable[[str], None]) -> tuple[list[str] | None, str]:
    """Install the Node original once; return ``(argv prefix, "")`` to start
    it, or ``(None, why it is skipped)``."""
    node = shutil.which("node")
    if node is None:
        return None, "node is not installed (apt-get install -y nodejs npm)"
    script = os.path.join(source, "bin", "http-runner")
    if not os.path.isfile(script):
        return None, "the Node original is not at %s (--node-peer DIR)" % source
    target = os.path.join(cache_dir(), "node-http-runner-" + _fingerprint(source))
    if not os.path.isdir(os.path.join(target, "node_modules", "optimist")):
        npm = shutil.which("npm")
        if npm is None:
            return None, "npm is not installed (apt-get install -y npm)"
        say("installing the Node original into %s (npm install)" % target)
        staging = "%s.tmp-%d" % (target, os.getpid())
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns("node_modules"))
        _make_writable(staging)
        try:
            subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--no-package-lock", "--omit=dev", "--silent"],
                cwd=staging,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=300,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as e:
            shutil.rmtree(staging, ignore_errors=True)
            detail = getattr(e, "stderr", b"") or b""
            return None, "npm install of the Node original failed: %s %s" % (
                e,
                detail.decode("utf-8", "replace").strip()[-300:],
            )
        shutil.rmtree(target, ignore_errors=True)
        os.rename(staging, target)
    return [node, os.path.join(target, "bin", "http-runner")], ""
