"""No one client takes the proxy from the others (protocol.py applies these per connection).

- ``address_group``: whom a connection counts against: its IPv4 address, or its IPv6 /64
  (one host is commonly given a whole /64, so single IPv6 addresses would let it hold any
  number of slots); ``None`` for a Unix socket, which has no address to tell callers apart.
- ``AddressShares``: connections held per group, at most ``limit`` each
  (``max_connections_per_address``). Bounded: a group leaves it with its last connection.
- ``RateWatch``: whether the request head or body the proxy is waiting for arrives slower
  than ``min_request_rate``. ``timeouts.client`` measures silence only, so a client sending
  a byte every few seconds would otherwise hold its connection as long as it likes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["AddressShares", "RateFloor", "RateWatch", "address_group"]


def address_group(peername: object) -> str | None:
    """``"192.0.2.7"``, ``"2001:db8:1:2::/64"``; ``None`` when there is no IP address."""
    if not isinstance(peername, tuple) or not peername or not isinstance(peername[0], str):
        return None
    try:
        ip = ipaddress.ip_address(peername[0].partition("%")[0])  # no zone: fe80::1%eth0
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:192.0.2.7 on a dual-stack socket
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AddressShares:
    """Connections open per address group; ``take`` refuses past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def take(self, group: str) -> bool:
        held = self._held.get(group, 0)
        if held >= self.limit:
            return False
        self._held[group] = held + 1
        return True

    def give_back(self, group: str) -> None:
        held = self._held.pop(group, 1) - 1
        if held > 0:
            self._held[group] = held

    def held(self, group: str) -> int:
        return self._held.get(group, 0)


@dataclass(frozen=True)
class RateFloor:
    """``rate`` bytes per second at least, measured over ``window`` seconds of waiting."""

    rate: float
    window: float

    def describe(self) -> str:
        return f"min_request_rate ({self.rate:g} bytes/s over {self.window:g} s)"


class RateWatch:
    """Bytes a connection sent while the proxy waited for one thing (a head, a body).

    ``check(waiting_for, now)`` runs every half window: ``waiting_for`` names what the
    proxy waits for (``None``: nothing, the client is not the one holding things up). A new
    thing, or reading paused since the last look (the proxy held the bytes back, not the
    client), starts the measure again; a full window measured below the floor is too slow."""

    __slots__ = ("_bytes", "_paused", "_since", "_what", "floor")

    def __init__(self, floor: RateFloor, now: float) -> None:
        self.floor = floor
        self._what: object | None = None
        self._since = now
        self._bytes = 0
        self._paused = False

    def received(self, size: int) -> None:
        self._bytes += size

    def paused(self) -> None:
        self._paused = True

    def check(self, waiting_for: object | None, now: float) -> str | None:
        """``None``, or what was too slow: ``"412 bytes in 10.0 s"``."""
        if waiting_for is None or waiting_for is not self._what or self._paused:
            self._what, self._since, self._bytes, self._paused = waiting_for, now, 0, False
            return None
        elapsed = now - self._since
        if elapsed < self.floor.window:
            return None
        if self._bytes < self.floor.rate * elapsed:
            return f"{self._bytes} bytes in {elapsed:.1f} s"
        self._since, self._bytes = now, 0
        return None
