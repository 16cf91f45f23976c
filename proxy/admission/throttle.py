"""Throttling failed logins and wrong credentials, so that access keys and local secrets
cannot be guessed at network speed from one address.

Failures are counted per source address (an IPv6 address by its /64, which one host or
one network usually holds whole), and never per client id or key: a count per client id
would let anyone's failures lock that client out everywhere (20 wrong logins a second for
``etl`` from random addresses kept the real ``etl`` out). The first few failures are free
(a mistyped secret); after that, each one shuts the address out for a while, doubling up to
a cap. While shut out, an attempt is refused (429, ``Retry-After``) without its credentials
being checked, so a guesser learns nothing; a success clears the count. One guesser on one
address drops from thousands of guesses a second to one every ``cap`` seconds.

The trade-off: a guesser with many addresses gets a few free tries from each. The defence
against that is the credentials' strength (16 characters at least, config/load.py; 128
random bits recommended), not a count that others' failures could fill.

Counts live in a bounded ``cachetools`` TTL cache: a flood of addresses costs fixed memory.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Callable

from cachetools import TTLCache

__all__ = ["LoginThrottle", "address_key"]


@functools.lru_cache(maxsize=1024)
def address_key(address: str) -> str:
    """What failures are counted by: an IPv4 address, an IPv6 address's /64 (an IPv4-mapped
    one as IPv4), anything else (a Unix socket's peer) as it is."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginThrottle:
    """``wait = throttle.shut_out(address)``; ``throttle.failed(address)``/``succeeded(...)``."""

    def __init__(
        self,
        *,
        free: int = 5,
        base: float = 1.0,
        cap: float = 30.0,
        maxsize: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._free, self._base, self._cap, self._clock = free, base, cap, clock
        # address -> (failures, shut out until); forgotten after a quiet spell of 10 caps.
        self._entries: TTLCache[str, tuple[int, float]] = TTLCache(
            maxsize=maxsize, ttl=cap * 10, timer=clock
        )

    def shut_out(self, address: str) -> float:
        """Seconds until this address may try again; 0 when it may now."""
        until = self._entries.get(address_key(address), (0, 0.0))[1]
        return max(0.0, until - self._clock())

    def failed(self, address: str) -> float:
        """Count a failure; returns how long the address is now shut out (0: not yet)."""
        key = address_key(address)
        failures = self._entries.get(key, (0, 0.0))[0] + 1
        over = failures - self._free
        wait = min(self._cap, self._base * 2.0 ** (over - 1)) if over > 0 else 0.0
        self._entries[key] = (failures, self._clock() + wait)
        return wait

    def succeeded(self, address: str) -> None:
        self._entries.pop(address_key(address), None)
