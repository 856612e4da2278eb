"""The callback target guard (``--callback-allow``): which addresses may be called.

The guard judges addresses, never URL text: a literal target is checked at
submission (:func:`~.urls.check_callback_url`), a host name at delivery,
after resolution, for *every* address it resolves to.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from httprunner.callbacks.urls import IPAddress, IPNetwork, normalize_host_name, parse_ip_literal, unmap

#: Cloud metadata services live here; refused unless a CIDR/IP entry covers them.
LINK_LOCAL: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
)


class CallbackGuard:
    """Which callback targets are allowed (``--callback-allow HOST|CIDR``, repeatable).

    Without entries every address is allowed except link-local ones
    (169.254.0.0/16, fe80::/10: cloud metadata services live there). With
    entries, an address is allowed when a CIDR (or listed IP) contains it, or
    when the URL's host name is listed and the address is not link-local.
    A link-local address is only ever allowed by a CIDR/IP entry covering it.
    """

    def __init__(self, entries: Iterable[str] = ()) -> None:
        """Parse entries; :class:`ValueError` with a one-line message for a bad one."""
        networks: list[IPNetwork] = []
        names: set[str] = set()
        for raw in entries:
            entry = self._parse_entry(raw)
            if isinstance(entry, str):
                names.add(entry)
            else:
                networks.append(entry)
        self.networks: tuple[IPNetwork, ...] = tuple(networks)
        self.names: frozenset[str] = frozenset(names)

    @staticmethod
    def _parse_entry(raw: str) -> IPNetwork | str:
        """A network for a CIDR or IP entry, the normalised name for a host name."""
        entry = raw.strip()
        prefix = f"--callback-allow {raw!r}: "
        if not entry:
            raise ValueError(prefix + "empty entry")
        if "/" in entry:
            try:
                return ipaddress.ip_network(entry, strict=True)
            except ValueError as e:
                raise ValueError(prefix + f"not a valid CIDR ({e})") from None
        if "*" in entry:
            raise ValueError(prefix + "wildcards are not supported; list each host or use a CIDR")
        if entry.count(":") == 1:
            raise ValueError(prefix + "give a host name or CIDR without a port")
        try:
            address = parse_ip_literal(entry)
        except ValueError as e:
            raise ValueError(prefix + str(e)) from None
        if address is not None:
            return ipaddress.ip_network(address)
        try:
            return normalize_host_name(entry)
        except ValueError as e:
            raise ValueError(prefix + str(e)) from None

    @property
    def restricted(self) -> bool:
        """True when ``--callback-allow`` entries were given."""
        return bool(self.networks or self.names)

    def refusal(self, address: IPAddress, host_name: str | None = None) -> str | None:
        """Why ``address`` (reached through ``host_name``, if any) is refused, or None."""
        address = unmap(address)
        if any(address in network for network in self.networks):
            return None
        if any(address in network for network in LINK_LOCAL):
            return f"callback target address {address} is link-local (refused unless --callback-allow lists it)"
        if not self.restricted or (host_name is not None and host_name in self.names):
            return None
        return f"callback target address {address} is not allowed by --callback-allow"
