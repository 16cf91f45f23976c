"""Which storage URLs the relay fetches: ``target_problem`` decides, once, for sealing and
for fetching alike; ``GuardedResolver`` checks the addresses a name resolves to.

A relayed URL comes from the gateway's answer, and the gateway is trusted with tokens, not
with the proxy's network position: a URL naming ``http://127.0.0.1:6379/``, a cloud's
metadata address or an intranet host would turn the relay into a way in. So a target must
be ``https``, without userinfo (which would be sent to storage as Basic credentials), named
by a host name (no IP literal, numeric forms such as ``2130706433`` included), and, when
``relay_hosts`` is set, under one of its suffixes. When the proxy connects directly (no egress
proxy for that URL), every address the name resolves to must be public: not loopback,
link-local, private, shared (CGNAT), multicast or reserved; an IPv6 address that reaches an
IPv4 one (IPv4-mapped, NAT64, 6to4) is judged by that IPv4 address. The check is made on the very
addresses the connection then uses (the resolver of the relay's own connector), so a name
that resolves differently the second time (DNS rebinding) gains nothing. Through an egress
proxy, the egress proxy resolves and decides.

The one exception is the profile's upstream itself (its scheme, host and port): the gateway
may serve objects from its own origin (the simulator does, over ``http`` on loopback), and
the proxy already talks to it.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp import DefaultResolver
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

__all__ = [
    "GuardedResolver",
    "RefusedAddress",
    "address_problem",
    "same_origin",
    "target_problem",
]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def same_origin(url: URL, upstream: URL) -> bool:
    """``url`` is on the upstream's own scheme, host and port."""
    return (url.scheme, url.host, url.port) == (upstream.scheme, upstream.host, upstream.port)


def target_problem(url: URL, upstream: URL, relay_hosts: tuple[str, ...]) -> str | None:
    """Why the relay will not fetch ``url`` (words for a message; never the URL's query),
    or None. ``upstream`` is the profile's own URL, the one exception."""
    if url.raw_user is not None or url.raw_password is not None:
        return "it carries userinfo (user:password@), which would be sent to storage"
    if not url.is_absolute() or not url.host:
        return "it names no host"
    if same_origin(url, upstream):
        return None
    if url.scheme != "https":
        return f"it is {url.scheme}://, and only https:// storage URLs are relayed"
    host = url.host.rstrip(".").lower()
    if _literal(host):
        return "it names an IP address, and only storage host names are relayed"
    if relay_hosts and not any(_under(host, suffix) for suffix in relay_hosts):
        return "its host is not under relay_hosts (DAP_PROXY_RELAY_HOSTS)"
    return None


def _under(host: str, suffix: str) -> bool:
    suffix = suffix.strip().lstrip(".").rstrip(".").lower()
    return bool(suffix) and (host == suffix or host.endswith("." + suffix))


def _literal(host: str) -> bool:
    """An IP address in any form a resolver would take as one (``127.1``, ``0x7f.1``)."""
    if ":" in host or host.startswith("["):
        return True
    try:
        socket.inet_aton(host)
    except OSError:
        return host.rsplit(".", 1)[-1].isdigit()  # a numeric last label: an IPv4 to browsers
    return True


def address_problem(address: str) -> str | None:
    """Why the relay will not connect to ``address`` (a resolved IP), or None."""
    try:
        ip: _Address = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return "a local-use NAT64 address (64:ff9b:1::/48)"
        ip = _embedded_ipv4(ip) or ip
    for kind, test in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("private", ip.is_private),
    ):
        if test:
            return f"a {kind} address"
    if not ip.is_global:
        return "not a public address"
    return None


# Where a NAT64 gateway (AWS's, for IPv6-only subnets) reaches IPv4: 64:ff9b::10.0.0.1 is
# the intranet's 10.0.0.1, though Python calls the IPv6 address global.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: embedding varies


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one reaches, judged in its place: IPv4-mapped, NAT64's
    well-known prefix, 6to4, IPv4-compatible (``::10.0.0.1``, not ``::`` or ``::1``)."""
    if ip.ipv4_mapped is not None or ip.sixtofour is not None:
        return ip.ipv4_mapped or ip.sixtofour
    if ip in _NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


class RefusedAddress(OSError):
    """A name resolved to an address the relay does not connect to (``GuardedResolver``).
    Its text names the host and the address: neither is secret."""


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing a name any of whose addresses is not public."""

    def __init__(self) -> None:
        self._resolver: AbstractResolver = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        for result in results:
            address = str(result["host"])
            problem = address_problem(address)
            if problem is not None:
                raise RefusedAddress(f"{host} resolves to {address}, {problem}")
        return results

    async def close(self) -> None:
        await self._resolver.close()
