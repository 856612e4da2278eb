"""The request guard: bearer tokens and browser defences in front of the API.

Every request passes three checks before any routing happens, in this order:

1. ``Host`` (DNS rebinding): the header must name an address this daemon
   listens on, or an ``--allowed-host`` name; otherwise ``400``.
2. ``Origin`` (cross-site requests from any web page to loopback): when the
   header is present it must be this server's own origin or an
   ``--allowed-origin``; otherwise ``403``, and nothing runs.
3. Bearer token (when ``--token-file`` is given): ``Authorization: Bearer
   <token>``, compared in constant time; otherwise ``401`` with
   ``WWW-Authenticate``. Only the open paths skip this check: ``/healthz``
   and the dashboard's static files (``/ui/`` and each file under it, which
   hold no data: the page sends the token on every data request). Because
   the check comes before routing, unknown paths answer ``401`` too (an
   unknown file under ``/ui/`` included), so an unauthenticated client
   learns nothing about the routes.

Clients that send no ``Origin`` (``curl``, scripts) are not affected by the
browser defences. Tokens and the ``Authorization`` header are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import ipaddress
import os
import re
import signal
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest

from httprunner.responses import json_error
from httprunner.site import format_peer
from httprunner.web import PUBLIC_PATHS as DASHBOARD_FILES
from httprunner.web import SECURITY_HEADERS as DASHBOARD_HEADERS

__all__ = [
    "ConfigError",
    "GuardedResource",
    "HostPolicy",
    "TokenFile",
    "install_reload_on_sighup",
    "is_local_endpoint",
    "refuse_anonymous_exposure",
]

# A token file is a handful of lines; the cap keeps a wrong path (a log
# file, a device) from blocking the reactor on reload.
MAX_TOKEN_FILE_BYTES = 1024 * 1024

# Shorter tokens are accepted but earn a warning: they can be guessed.
MIN_RECOMMENDED_TOKEN_LENGTH = 16

OPEN_PATHS = frozenset({b"/healthz"}) | DASHBOARD_FILES

REALM = b'Bearer realm="httprunner"'
REALM_INVALID = b'Bearer realm="httprunner", error="invalid_token"'

# Query parameters that other services accept as tokens; we never do, but we
# say so in the 401 so a user who tries it learns why it fails.
QUERY_TOKEN_NAMES = (b"token", b"access_token")


class ConfigError(Exception):
    """A configuration value is unusable; the message is one line for the user.

    Messages never contain token material (only paths and line numbers).
    """


# --------------------------------------------------------------------------
# Tokens


def _read_tokens(path: str, log: Logger) -> tuple[bytes, ...]:
    """Read and validate the token file; raise ConfigError or OSError."""
    with open(path, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        data = f.read(MAX_TOKEN_FILE_BYTES + 1)
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise ConfigError(f"--token-file {path}: larger than {MAX_TOKEN_FILE_BYTES} bytes")
    tokens = []
    for number, raw_line in enumerate(data.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith(b"#"):
            continue
        # Printable ASCII without spaces is what can travel in an
        # Authorization header; anything else could never match, so it is
        # a mistake in the file (e.g. "token = abc") worth stopping for.
        if not all(0x21 <= byte <= 0x7E for byte in line):
            raise ConfigError(f"--token-file {path}: line {number}: a token must be printable ASCII without spaces")
        tokens.append(line)
    if not tokens:
        raise ConfigError(f"--token-file {path}: no tokens (the file is empty or has only comments)")
    if stat.S_ISREG(mode) and mode & stat.S_IROTH:
        log.warn("token file {path} is readable by every user; chmod o-r it", path=path)
    for number, token in enumerate(tokens, start=1):
        if len(token) < MIN_RECOMMENDED_TOKEN_LENGTH:
            log.warn(
                "token file {path}: token {number} is shorter than {minimum} characters; use a long random token",
                path=path,
                number=number,
                minimum=MIN_RECOMMENDED_TOKEN_LENGTH,
            )
    return tuple(tokens)


class TokenFile:
    """The bearer tokens of ``--token-file``, reloadable while running.

    Only keyed digests of the tokens are kept. :meth:`check` compares a
    digest of the presented token with every stored digest, so the time it
    takes depends neither on which token matched nor on the tokens' lengths.
    """

    log = Logger()

    def __init__(self, path: str):
        self.path = path
        # A per-process key: the digests are useless outside this process.
        self._key = os.urandom(32)
        self._digests = self._load()

    def _digest(self, token: bytes) -> bytes:
        return hmac.new(self._key, token, hashlib.sha256).digest()

    def _load(self) -> tuple[bytes, ...]:
        try:
            tokens = _read_tokens(self.path, self.log)
        except OSError as e:
            raise ConfigError(f"--token-file {self.path}: cannot read it: {e.strerror or e}") from None
        return tuple(self._digest(token) for token in tokens)

    @property
    def count(self) -> int:
        """How many tokens are accepted."""
        return len(self._digests)

    def reload(self) -> bool:
        """Re-read the file; keep the old tokens if it is now unusable.

        Returns whether the new tokens are in force. Running jobs and open
        connections are not touched.
        """
        try:
            digests = self._load()
        except ConfigError as e:
            self.log.error(
                "tokens not reloaded: {problem}; keeping the {count} tokens loaded before",
                problem=str(e),
                count=self.count,
            )
            return False
        self._digests = digests
        self.log.info("tokens reloaded from {path}: {count} tokens", path=self.path, count=self.count)
        return True

    def check(self, presented: bytes) -> bool:
        """Whether ``presented`` is one of the tokens, in constant time."""
        probe = self._digest(presented)
        matched = False
        # No early exit: every stored digest is compared every time.
        for digest in self._digests:
            matched |= hmac.compare_digest(probe, digest)
        return matched


def install_reload_on_sighup(reactor: Any, token_file: TokenFile) -> Callable[[], None]:
    """Reload ``token_file`` on SIGHUP; return a function that undoes this.

    The signal handler only schedules the reload: it runs on the reactor
    thread, between requests, never in the middle of one.
    Must be called from the main thread (a Python rule for signals).
    """

    def on_sighup(signum: int, frame: object) -> None:
        reactor.callFromThread(token_file.reload)

    previous = signal.signal(signal.SIGHUP, on_sighup)

    def uninstall() -> None:
        if signal.getsignal(signal.SIGHUP) is on_sighup:
            signal.signal(signal.SIGHUP, previous if previous is not None else signal.SIG_DFL)

    return uninstall


# --------------------------------------------------------------------------
# Listener endpoints


@dataclass(frozen=True)
class _Listener:
    """What the guard needs to know about one ``--listen`` endpoint.

    ``kind`` is ``tcp`` (tcp, tcp6, ssl), ``unix``, or ``other`` (systemd and
    plugin endpoints, whose address is not known in advance). ``address``
    is the normalised bound address, ``None`` for all interfaces.
    """

    kind: str
    address: str | None = None
    port: int | None = None
    loopback: bool = False


def _bind(function: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Map endpoint string arguments to Twisted's own parser parameters."""
    try:
        bound = inspect.signature(function).bind(None, *args, **kwargs)
    except TypeError as e:
        raise ValueError(str(e)) from None
    bound.apply_defaults()
    return dict(bound.arguments)


def _parse_listener(description: str) -> _Listener:
    """Parse a server endpoint string with Twisted's own syntax and defaults.

    Twisted's parameter lists are reused (not the constructors), so an
    ``ssl:`` string is understood without reading its key files.
    Raises ValueError for a string that is not an endpoint description.
    """
    args, kwargs = endpoints._parse(description)
    if not args or not args[0]:
        raise ValueError(f"not an endpoint description: {description!r}")
    kind, rest = args[0].lower(), args[1:]
    if kind == "unix":
        _bind(endpoints._parseUNIX, rest, kwargs)
        return _Listener("unix")
    if kind == "tcp":
        params = _bind(endpoints._parseTCP, rest, kwargs)
    elif kind == "ssl":
        params = _bind(endpoints._parseSSL, rest, kwargs)
    elif kind == "tcp6":
        params = _bind(endpoints._TCP6ServerParser()._parseServer, rest, kwargs)
    else:
        return _Listener("other")
    try:
        port = int(params["port"])
    except ValueError:
        raise ValueError(f"bad port in {description!r}") from None
    interface = str(params["interface"]).strip().lower()
    if interface in ("", "0.0.0.0", "::", "[::]"):
        return _Listener("tcp", None, port)
    if interface == "localhost":
        return _Listener("tcp", "localhost", port, loopback=True)
    ip = _parse_ip(interface)
    if ip is None:
        # A host name as interface: Twisted resolves it when binding. It is
        # a listening address, but not known to be loopback.
        return _Listener("tcp", interface.rstrip("."), port)
    if ip.is_unspecified:
        return _Listener("tcp", None, port)
    return _Listener("tcp", str(ip), port, loopback=_is_loopback(ip))


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _is_loopback(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # ::ffff:127.0.0.1 is loopback, but Python 3.11 says otherwise.
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def is_local_endpoint(description: str) -> bool:
    """Whether a server endpoint string is reachable only from this machine.

    ``tcp:``/``tcp6:``/``ssl:`` bound to a loopback address (127.0.0.0/8,
    ``::1``, ``localhost``) and ``unix:`` sockets are local; all interfaces
    (``tcp:9000`` has no interface, so it means all of them), other
    addresses, ``systemd:`` (address unknown) and unknown types are not.
    Raises ValueError for a string that is not an endpoint description.
    """
    listener = _parse_listener(description)
    return listener.kind == "unix" or listener.loopback


def refuse_anonymous_exposure(endpoint_descriptions: Iterable[str], *, has_tokens: bool, allow_anonymous: bool) -> None:
    """Raise ConfigError if a non-local listener would serve without tokens."""
    if has_tokens or allow_anonymous:
        return
    exposed = [d for d in endpoint_descriptions if not is_local_endpoint(d)]
    if exposed:
        raise ConfigError(
            f"refusing to listen on {', '.join(exposed)} without authentication: anyone who "
            "can reach it could run commands; give --token-file FILE, or --allow-anonymous "
            "if this network is trusted"
        )


# --------------------------------------------------------------------------
# Host and Origin

_NAME = re.compile(r"[a-z0-9_\-]+(\.[a-z0-9_\-]+)*\.?")
_PORT = re.compile(r"[0-9]{0,5}")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _normalise_name(name: str) -> str | None:
    """Lower-case name without a trailing dot, or canonical IP text; None if invalid."""
    name = name.lower()
    if name.startswith("["):
        if not name.endswith("]"):
            return None
        try:
            return str(ipaddress.IPv6Address(name[1:-1]))
        except ValueError:
            return None
    if not _NAME.fullmatch(name):
        return None
    name = name.rstrip(".")
    try:
        return str(ipaddress.IPv4Address(name))
    except ValueError:
        return name


def _split_authority(authority: str) -> tuple[str, int | None] | None:
    """``host[:port]`` -> (normalised host, port or None); None if malformed."""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, rest = authority[: end + 1], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = authority.partition(":")
    if not _PORT.fullmatch(port_text):
        return None
    port = int(port_text) if port_text else None
    if port is not None and port > 65535:
        return None
    name = _normalise_name(host)
    if name is None:
        return None
    return name, port


def _parse_host_header(value: bytes) -> tuple[str, int | None] | None:
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        return None
    return _split_authority(text)


def _parse_origin(value: str) -> tuple[str, str, int | None] | None:
    """``scheme://host[:port]`` -> (scheme, host, port without default); None if not one."""
    scheme, sep, authority = value.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        return None
    parts = _split_authority(authority)
    if parts is None:
        return None
    name, port = parts
    if port == _DEFAULT_PORTS[scheme]:
        port = None
    return scheme, name, port


def _is_ip_literal(name: str) -> bool:
    return _parse_ip(name) is not None


@dataclass(frozen=True)
class _HostRule:
    """Which Host names one listener accepts."""

    kind: str
    port: int | None
    names: frozenset[str]
    any_host: bool = False
    # A listener on all interfaces is reached by any of the machine's
    # addresses: IP literals and "localhost" name one of them, and cannot be
    # the attacker's name in a DNS rebinding attack.
    ip_literals: bool = False

    def accepts(self, name: str) -> bool:
        if self.any_host or name in self.names:
            return True
        return self.ip_literals and _is_ip_literal(name)


#: how many distinct (Host, listener) verdicts HostPolicy remembers
HOST_VERDICTS_KEPT = 256


class HostPolicy:
    """Which ``Host`` and ``Origin`` header values are allowed.

    Host names are matched without their port, so a tunnel or port forward
    (``ssh -L 8080:localhost:9000``) keeps working; DNS rebinding is stopped
    by the name.
    """

    def __init__(
        self,
        rules: Iterable[_HostRule],
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[tuple[str, str, int | None]] = (),
    ):
        self._rules = tuple(rules)
        self._allowed_hosts = frozenset(allowed_hosts)
        self._allowed_origins = frozenset(allowed_origins)
        # (Host header, local address) -> verdict: clients send the same
        # few Host values on every request. Bounded: cleared when full.
        self._host_verdicts: dict[tuple[bytes, object], bool] = {}

    @classmethod
    def from_listeners(cls, endpoints: list[str], allowed_hosts: list[str], allowed_origins: list[str]) -> HostPolicy:
        """Build the policy; ConfigError for an unusable host/origin/endpoint."""
        hosts = set()
        for value in allowed_hosts:
            name = _normalise_name(value.strip())
            if name is None:
                # Maybe a bare IPv6 address.
                ip = _parse_ip(value.strip())
                name = str(ip) if ip is not None else None
            if name is None:
                raise ConfigError(f"--allowed-host {value!r}: expected a host name or address without port")
            hosts.add(name)
        origins = set()
        for value in allowed_origins:
            text = value.strip()
            if text.endswith("/") and text.count("/") == 3:
                text = text[:-1]
            if text.lower() == "null":
                raise ConfigError("--allowed-origin null: would admit sandboxed pages and local files from anywhere")
            origin = _parse_origin(text)
            if origin is None:
                raise ConfigError(
                    f"--allowed-origin {value!r}: expected scheme://host[:port] with scheme http or https"
                )
            origins.add(origin)
        rules = []
        for description in endpoints:
            try:
                listener = _parse_listener(description)
            except ValueError as e:
                raise ConfigError(f"--listen {description!r}: {e}") from None
            if listener.kind == "tcp" and listener.loopback:
                names = set(_LOOPBACK_NAMES)
                names.add(str(listener.address))
                rules.append(_HostRule("tcp", listener.port, frozenset(names)))
            elif listener.kind == "tcp" and listener.address is not None:
                rules.append(_HostRule("tcp", listener.port, frozenset({listener.address})))
            else:
                # All interfaces, unix sockets, systemd: without
                # --allowed-host any Host passes (the DESIGN's rule).
                rules.append(
                    _HostRule(
                        listener.kind,
                        listener.port,
                        frozenset({"localhost"}),
                        any_host=not hosts,
                        ip_literals=True,
                    )
                )
        return cls(rules, hosts, origins)

    def _rules_for(self, local: object) -> tuple[_HostRule, ...]:
        """The rules of the listener(s) a connection with local address ``local`` came in on."""
        if isinstance(local, UNIXAddress):
            chosen = tuple(r for r in self._rules if r.kind in ("unix", "other"))
        elif isinstance(local, (IPv4Address, IPv6Address)):
            chosen = tuple(
                r for r in self._rules if r.kind == "other" or (r.kind == "tcp" and r.port in (None, 0, local.port))
            )
        else:
            chosen = ()
        # Unknown connection: the union of every listener's rules.
        return chosen or self._rules

    def host_allowed(self, host_header: bytes | None, is_tls: bool, *, local: object = None) -> bool:
        """Whether a request with this ``Host`` header may proceed.

        ``local`` is the connection's own address (``request.getHost()``),
        which tells which listener's rules apply; without it, any
        listener's rules may admit the request.
        """
        if host_header is None:
            return True
        key = (host_header, local)
        verdict = self._host_verdicts.get(key)
        if verdict is None:
            if len(self._host_verdicts) >= HOST_VERDICTS_KEPT:
                self._host_verdicts.clear()
            verdict = self._host_verdicts[key] = self._judge_host(host_header, local)
        return verdict

    def _judge_host(self, host_header: bytes, local: object) -> bool:
        parts = _parse_host_header(host_header)
        if parts is None:
            return False
        name = parts[0]
        if name in self._allowed_hosts:
            return True
        return any(rule.accepts(name) for rule in self._rules_for(local))

    def origin_allowed(
        self,
        origin: bytes,
        host_header: bytes | None,
        is_tls: bool,
        *,
        local: object = None,
    ) -> bool:
        """Whether a request carrying this ``Origin`` header may proceed.

        It may if the origin is listed in ``--allowed-origin``, or is this
        server's own origin: the scheme of the connection and the request's
        own (allowed) ``Host``.
        """
        try:
            text = origin.decode("ascii")
        except UnicodeDecodeError:
            return False
        parsed = _parse_origin(text)
        if parsed is None:
            # Includes "null" (sandboxed frames, file: pages, redirects).
            return False
        if parsed in self._allowed_origins:
            return True
        if host_header is None or not self.host_allowed(host_header, is_tls, local=local):
            return False
        host = _parse_host_header(host_header)
        if host is None:
            return False
        scheme = "https" if is_tls else "http"
        name, port = host
        if port == _DEFAULT_PORTS[scheme]:
            port = None
        return parsed == (scheme, name, port)


# --------------------------------------------------------------------------
# The resource


def _peer(request: IRequest) -> str:
    return format_peer(request.getClientAddress())


class GuardedResource(Resource):
    """An IResource that checks Host, Origin and token, then delegates.

    It is a leaf, so the checks run before any routing: the wrapped
    resource (Klein's, itself a leaf) then handles the whole path as if it
    were the site's root. A non-leaf wrapped resource is traversed as the
    site would have.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        wrapped: IResource,
        *,
        tokens: TokenFile | None,
        hosts: HostPolicy,
        open_paths: frozenset[bytes] = OPEN_PATHS,
    ):
        super().__init__()
        self._wrapped = wrapped
        self._tokens = tokens
        self._hosts = hosts
        self._open_paths = open_paths

    def render(self, request: IRequest) -> bytes | int:
        refusal = self._refuse(request)
        if refusal is not None:
            return refusal
        # IResource.render is unannotated; its contract is bytes or NOT_DONE_YET.
        answer: bytes | int
        if self._wrapped.isLeaf:
            answer = self._wrapped.render(request)
        else:
            answer = getChildForRequest(self._wrapped, request).render(request)
        return answer

    def _refused(
        self,
        request: IRequest,
        status: int,
        reason: str,
        error: str,
        challenge: bytes | None = None,
    ) -> bytes:
        # One event per refusal; the reason is one of our own constants,
        # never header content, so it cannot carry a token.
        self.log.info(
            "refused request from {peer}: {reason}",
            peer=_peer(request),
            reason=reason,
            status=status,
        )
        if challenge is not None:
            request.setHeader(b"WWW-Authenticate", challenge)
        if request.path == b"/ui" or request.path.startswith(b"/ui/"):
            # every answer under /ui carries the dashboard's headers, refusals too
            for name, value in DASHBOARD_HEADERS:
                request.setHeader(name, value)
        return json_error(request, status, error)

    def _refuse(self, request: IRequest) -> bytes | None:
        """The refusal body if the request may not proceed, else None."""
        headers = request.requestHeaders
        is_tls = bool(request.isSecure())
        local = request.getHost()

        host_values = headers.getRawHeaders(b"host") or []
        if len(host_values) > 1:
            return self._refused(request, 400, "more than one Host header", "more than one Host header")
        host = host_values[0] if host_values else None
        if not self._hosts.host_allowed(host, is_tls, local=local):
            return self._refused(
                request,
                400,
                "Host not allowed",
                "the Host header does not name an address this server listens on (see --allowed-host)",
            )

        origins = headers.getRawHeaders(b"origin") or []
        if len(origins) > 1 or (origins and not self._hosts.origin_allowed(origins[0], host, is_tls, local=local)):
            return self._refused(
                request,
                403,
                "Origin not allowed",
                "cross-origin requests are not allowed (see --allowed-origin)",
            )

        if self._tokens is None or request.path in self._open_paths:
            return None
        return self._authenticate(request)

    def _authenticate(self, request: IRequest) -> bytes | None:
        assert self._tokens is not None
        values = request.requestHeaders.getRawHeaders(b"authorization") or []
        if len(values) > 1:
            return self._refused(
                request,
                401,
                "more than one Authorization header",
                "more than one Authorization header",
                REALM_INVALID,
            )
        token = b""
        if values:
            scheme, _, rest = values[0].strip().partition(b" ")
            if scheme.lower() == b"bearer":
                token = rest.strip(b" \t")
        if not token:
            args = getattr(request, "args", None) or {}
            if any(name in args for name in QUERY_TOKEN_NAMES):
                error = "a token in the query string is not accepted; send the header 'Authorization: Bearer <token>'"
            else:
                error = "missing bearer token: send the header 'Authorization: Bearer <token>'"
            return self._refused(request, 401, "missing token", error, REALM)
        if not self._tokens.check(token):
            return self._refused(request, 401, "invalid token", "invalid bearer token", REALM_INVALID)
        return None
