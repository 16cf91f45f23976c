"""Fairness at the connection level (issue 19, item 1): one address trickling requests on
many connections cannot take the proxy from another address.

The attacks of the finding, scaled down: low limits and a short rate window, and distinct
loopback source addresses (Linux routes all of 127.0.0.0/8 to lo), so each test takes a
second or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from proxy.server.fairness import AddressShares, RateFloor, RateWatch, address_group

from .conftest import Gateway, Proxy, ProxyFactory

ATTACKER, VICTIM = "127.0.0.2", "127.0.0.3"
BOUND = 5  # seconds: generous
TABLES = "/dap/query/canvas/table"
FAIR = {
    "DAP_PROXY_MAX_CONNECTIONS": "6",
    "DAP_PROXY_MAX_CONNECTIONS_PER_ADDRESS": "3",
    # 40 bytes in each 0.4 s the proxy waits: a header line every 0.15 s (about 70 bytes/s)
    # passes; one every 0.3 s (about 37 bytes/s) does not.
    "DAP_PROXY_MIN_REQUEST_RATE": "100",
    "DAP_PROXY_MIN_REQUEST_RATE_WINDOW": "0.4",
}


def port_of(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


async def open_from(
    proxy: Proxy, address: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port_of(proxy), local_addr=(address, 0))


async def answer_of(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Everything up to EOF (each answer here closes its connection): status, error."""
    data = await asyncio.wait_for(reader.read(), BOUND)
    head, _, body = data.partition(b"\r\n\r\n")
    error: dict[str, str] = json.loads(body)["error"]
    return int(head.split(b" ", 2)[1]), error


async def first_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]] | None:
    """The answer to a connection that sent nothing yet, or None: it is held open."""
    try:
        async with asyncio.timeout(1.0):
            return await answer_of(reader)
    except TimeoutError:
        return None


@contextlib.asynccontextmanager
async def session_from(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        yield http


async def trickle_head(writer: asyncio.StreamWriter, pause: float) -> None:
    """A request head one header line at a time, never finished."""
    writer.write(b"GET " + TABLES.encode() + b" HTTP/1.1\r\n")
    with contextlib.suppress(ConnectionError):
        for n in range(1000):
            await asyncio.sleep(pause)
            writer.write(b"X-Trickle-%d: a\r\n" % n)
            await writer.drain()


async def test_one_address_trickling_many_connections_cannot_stop_another(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(gateway.url, **FAIR)
    attack = [await open_from(proxy, ATTACKER) for _ in range(8)]
    tricklers = []
    try:
        # Its share is 3: the other 5 are refused at once, naming the setting.
        answers = await asyncio.gather(*(first_answer(reader) for reader, _ in attack))
        refused = [answer for answer in answers if answer is not None]
        held = [reader for (reader, _), answer in zip(attack, answers, strict=True) if not answer]
        tricklers = [
            asyncio.create_task(trickle_head(writer, 0.3))
            for (_, writer), answer in zip(attack, answers, strict=True)
            if answer is None
        ]
        assert len(refused) == 5
        for status, error in refused:
            assert (status, error["type"]) == (503, "TooManyConnections")
            assert "max_connections_per_address: 3" in error["message"]
        # Meanwhile another address is served, and more than its share of the attacker's
        # slots would let it (6 - 3).
        async with session_from(VICTIM) as http:
            for _ in range(5):
                async with http.get(proxy.url + TABLES) as resp:
                    assert resp.status == 200
        # And the three trickling heads are cut, 408, naming the floor.
        assert len(held) == 3
        for reader in held:
            status, error = await answer_of(reader)
            assert (status, error["type"]) == (408, "RequestTimeout")
            assert error["message"] == (
                "the request head arrived slower than min_request_rate (100 bytes/s over 0.4 s)"
            )
    finally:
        for task in tricklers:
            task.cancel()
        for _, writer in attack:
            writer.close()
    # Its share comes back as its connections close: the attacker's address is served again.
    async with session_from(ATTACKER) as http, asyncio.timeout(BOUND):
        while True:
            async with http.get(proxy.url + TABLES) as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.05)


async def test_a_head_sent_slowly_but_above_the_floor_is_served(
    gateway: Gateway, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(gateway.url, **FAIR)
    reader, writer = await open_from(proxy, VICTIM)
    writer.write(b"GET " + TABLES.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for n in range(8):  # 1.2 s: three windows, each above the floor
        await asyncio.sleep(0.15)
        writer.write(b"X-Slow-%d: %s\r\n" % (n, b"a" * 20))
    writer.write(b"Connection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), BOUND)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200 "), data[:80]


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_body_trickled_under_a_large_content_length_is_cut_with_408(
    gateway: Gateway, proxy_factory: ProxyFactory, streamed: bool
) -> None:
    """A byte every 0.1 s: ``timeouts.client`` (silence) never fires; the floor does. Read
    whole (replayable) or streamed to the gateway, the same."""
    limit = {"DAP_PROXY_REPLAY_BODY_LIMIT": "10"} if streamed else {}
    proxy = await proxy_factory(gateway.url, **FAIR, **limit)
    reader, writer = await open_from(proxy, ATTACKER)
    writer.write(b"POST /test/echo/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n")

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(100):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.1)

    trickling = asyncio.create_task(trickle())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
        assert head.startswith(b"HTTP/1.1 408 "), head
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        error = json.loads(await reader.readexactly(length))["error"]
        assert error["type"] == "RequestTimeout"
        assert error["message"] == (
            "the request body arrived slower than min_request_rate (100 bytes/s over 0.4 s)"
        )
        with contextlib.suppress(ConnectionResetError):  # closed with the trickle unread
            assert await asyncio.wait_for(reader.read(), BOUND) == b"", "then closed"
    finally:
        trickling.cancel()
        writer.close()


def test_ipv6_addresses_count_by_their_64() -> None:
    assert address_group(("2001:db8:1:2::7", 5000, 0, 0)) == "2001:db8:1:2::/64"
    assert address_group(("2001:db8:1:2:ffff::1", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert address_group(("2001:db8:1:3::7", 1, 0, 0)) == "2001:db8:1:3::/64"
    assert address_group(("::ffff:192.0.2.7", 1, 0, 0)) == "192.0.2.7"
    assert address_group(("fe80::1%eth0", 1, 0, 2)) == "fe80::/64"
    assert address_group(("192.0.2.7", 1)) == "192.0.2.7"
    assert address_group("") is None  # a Unix socket's peer
    assert address_group(None) is None


def test_address_shares_are_bounded_and_given_back() -> None:
    shares = AddressShares(2)
    assert shares.take("a") and shares.take("a")
    assert not shares.take("a")
    assert shares.take("b")
    shares.give_back("a")
    assert shares.take("a")
    for _ in range(2):
        shares.give_back("a")
    shares.give_back("b")
    assert shares._held == {}, "a group leaves with its last connection"


def test_the_rate_is_measured_only_while_the_proxy_waits_on_the_client() -> None:
    watch = RateWatch(RateFloor(rate=100, window=1.0), now=0.0)
    body = object()
    assert watch.check(body, 0.0) is None  # starts measuring
    watch.received(50)
    assert watch.check(body, 0.5) is None  # not a full window yet
    assert watch.check(body, 1.0) == "50 bytes in 1.0 s"
    # Reading paused (the proxy held the bytes back): the measure starts again.
    watch = RateWatch(RateFloor(rate=100, window=1.0), now=0.0)
    watch.check(body, 0.0)
    watch.paused()
    assert watch.check(body, 1.0) is None
    assert watch.check(body, 1.5) is None
    watch.received(100)
    assert watch.check(body, 2.0) is None  # 100 bytes in 1 s: at the floor
    # Waiting for something else (the next head): measured from scratch.
    assert watch.check(object(), 2.5) is None
    assert watch.check(None, 3.0) is None  # waiting for nothing
