"""The dashboard's static files (``/ui/``) and how they are answered.

The page is plain files in this package (HTML, one stylesheet, ES
modules, an icon), read once at import and answered from memory: a file
that is not in :data:`FILES` does not exist, whatever the path says, so no
path can reach the file system (Klein percent-decodes paths before
routing) and there is no directory listing.  The files hold no data; every
number the page shows comes from an ordinary API request with all its
checks, so they need no token (:data:`PUBLIC_PATHS` tells the guard which
paths these are).  Every answer under ``/ui`` carries the strict headers
of DESIGN §11.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass

from twisted.web.iweb import IRequest

from httprunner.responses import json_error

__all__ = ["FILES", "PUBLIC_PATHS", "SECURITY_HEADERS", "StaticFile", "redirect_to_index", "serve"]

#: what each kind of file is sent as; anything else in the package is not served
CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
}

CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)

#: sent with every answer under /ui, the 404s and the redirect included
SECURITY_HEADERS = (
    (b"Content-Security-Policy", CONTENT_SECURITY_POLICY),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
)


@dataclass(frozen=True)
class StaticFile:
    """One file of the page, as it is sent."""

    body: bytes
    content_type: bytes
    etag: bytes


def _load() -> dict[str, StaticFile]:
    files = {}
    for entry in importlib.resources.files(__name__).iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            body = entry.read_bytes()
            etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:20].encode("ascii")
            files[entry.name] = StaticFile(body, CONTENT_TYPES[suffix], etag)
    return files


#: file name -> file; read once: the page is a few tens of KiB
FILES = _load()

#: the request paths that are static files (the guard lets them through without a token)
PUBLIC_PATHS = frozenset({b"/ui", b"/ui/"} | {b"/ui/" + name.encode("ascii") for name in FILES})


def _secure(request: IRequest) -> None:
    for name, value in SECURITY_HEADERS:
        request.setHeader(name, value)


def serve(request: IRequest, name: str) -> bytes:
    """Answer ``GET /ui/<name>``: the file, a 304, or a JSON 404."""
    _secure(request)
    found = FILES.get(name)
    if found is None:
        return json_error(request, 404, "no such file in the dashboard: %r" % name[:80])
    # The files change only with the package: revalidate (cheap, a 304)
    # rather than cache, so an upgrade is seen at the next load.
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"ETag", found.etag)
    if found.etag in (request.getHeader(b"if-none-match") or b"").replace(b" ", b"").split(b","):
        request.setResponseCode(304)
        return b""
    request.setHeader(b"Content-Type", found.content_type)
    request.setHeader(b"Content-Length", b"%d" % len(found.body))
    return found.body


def redirect_to_index(request: IRequest) -> bytes:
    """Answer ``GET /ui`` with a redirect to ``/ui/``.

    The target is relative (``ui/``) so that it stays right behind a
    reverse proxy that serves the daemon under a path prefix.
    """
    _secure(request)
    request.setResponseCode(301)
    request.setHeader(b"Location", b"ui/")
    body = b"the dashboard is at ui/\n"
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body
