"""Hostile input against what issues 18-20 added, kept: a Redis that answers what a real one
never would (a server that speaks RESP but is not Redis, or a compromised one), relay ids
malformed, replayed and sealed elsewhere, local tokens forged across profiles and keys, and
storage URLs disguised as public names. Everything listens on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import hmac
import io
import json
import logging
import socket
import string
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from proxy.admission.access import AccessControl, Caller
from proxy.admission.local_tokens import (
    BAD_SIGNATURE,
    MALFORMED,
    UNKNOWN_KEY,
    LocalClaims,
    LocalTokenIssuer,
)
from proxy.admission.throttle import address_key
from proxy.config import Config
from proxy.config.records import AccessConfig, SharedStateConfig
from proxy.observe.background import Supervisor
from proxy.server.fairness import address_group
from proxy.server.keys import RELAY
from proxy.server.reload import Reloader
from proxy.sharing.redis_budgets import RedisBudgets
from proxy.sharing.redis_cache import RedisCache
from proxy.sharing.relay_seal import KeyRing, Sealed, SealUnknown
from proxy.sharing.relay_targets import (
    GuardedResolver,
    RefusedAddress,
    address_problem,
    target_problem,
)
from proxy.sharing.shared_state import SharedState

from .conftest import Gateway, GatewayFactory, ProxyFactory
from .connect_proxy import ConnectProxy
from .relay_support import DATA, HOST, Storage, object_url, relay_proxy, start_storage
from .test_reload import KEY, OTHER, Keyed, keyed
from .test_shared_state import plain
from .test_sharing import TABLES, create_job, get, shaped
from .waiting import until

UPSTREAM = URL("http://127.0.0.1:9000")
__all__ = ["keyed"]  # the fixture, used by name

# --- A "Redis" that says what it is told ------------------------------------------------

Reply = Callable[[list[bytes]], bytes]


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def array(*items: bytes) -> bytes:
    """A RESP array of already-encoded items."""
    return b"*%d\r\n" % len(items) + b"".join(items)


async def _command(reader: asyncio.StreamReader) -> list[bytes]:
    head = await reader.readline()
    if not head.startswith(b"*"):
        raise ConnectionError("not RESP")
    parts = []
    for _ in range(int(head[1:])):
        length = int((await reader.readline())[1:])
        parts.append((await reader.readexactly(length + 2))[:-2])
    return parts


@contextlib.contextmanager
def _closing(writer: asyncio.StreamWriter) -> Iterator[None]:
    try:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, ValueError):
            yield
    finally:
        writer.close()


HELLO = b"%1\r\n+proto\r\n:3\r\n"  # Redis 6's answer, as much as the client reads of it


@contextlib.asynccontextmanager
async def resp_server(
    scripts: Reply, *, hello: bytes = b"%1\r\n+proto\r\n:3\r\n"
) -> AsyncIterator[int]:
    """A loopback server answering PING and the like as Redis does, ``HELLO`` with ``hello``,
    and every script call (EVALSHA) with ``scripts(command)``: its port."""

    connections: set[asyncio.StreamWriter] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.add(writer)
        with _closing(writer):
            while True:
                command = await _command(reader)
                name = command[0].upper()
                if name == b"PING":
                    writer.write(b"+PONG\r\n")
                elif name == b"HELLO":
                    writer.write(hello)
                elif name == b"EVALSHA":
                    writer.write(scripts(command))
                else:
                    writer.write(b"+OK\r\n")
                await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        # From Python 3.12, wait_closed() waits for every connection: a proxy still running
        # holds its pool's open, so they are cut first.
        for writer in connections:
            writer.transport.abort()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def fake_redis(scripts: Reply) -> AsyncIterator[SharedState]:
    """A started ``SharedState`` on a ``resp_server``."""
    async with resp_server(scripts) as port:
        state = SharedState(SharedStateConfig(URL(f"redis://127.0.0.1:{port}/0")), Supervisor())
        await state.start()
        try:
            assert state.up
            yield state
        finally:
            await state.close()


PASSWORD = "hostile-redis-password-0123"
_ANY = ("default", "/dap/query/canvas/table", "")  # a cache key


@pytest.mark.parametrize(
    "answer",
    [
        array(b":1\r\n", _bulk(b"inf")),  # granted, after forever
        array(b":1\r\n", _bulk(b"1e9")),  # granted, after 31 years: past any max_wait
        array(b":0\r\n", _bulk(b"inf")),  # refused, a slot frees never: Retry-After inf
        array(b":7\r\n", _bulk(b"0")),  # neither granted nor refused
    ],
)
async def test_a_redis_impostor_cannot_hold_a_request_forever(answer: bytes) -> None:
    """FOUND: a grant ``{1, "inf"}`` from a server speaking RESP made the request sleep
    forever (asyncio.sleep(inf)); now any answer RESERVE could not give is a miss: the
    replica's own budget decides, and the error is counted."""
    async with fake_redis(lambda _: answer) as state:
        budgets = RedisBudgets(state, {"default": "ns"})
        found = await asyncio.wait_for(budgets.reserve("default", "create_job", 5, 61.2, 60), 5)
        assert found is None and state.errors == 1


@pytest.mark.parametrize(
    "answer",
    [
        array(_bulk(b"[]"), b":100000000000\r\n", _bulk(b"0")),  # bytes(10**11): MemoryError
        array(_bulk(b"[]"), b":5\r\n", _bulk(b"0")),  # bytes(5): five zero bytes as a body
        array(_bulk(b"[]"), _bulk(b"{}"), _bulk(b"inf")),  # Age: int(inf) OverflowError later
        array(_bulk(b"[" * 100_000 + b"]" * 100_000), _bulk(b"{}"), _bulk(b"1")),  # Recursion
    ],
)
async def test_a_redis_impostor_cache_entry_is_a_miss(answer: bytes) -> None:
    """FOUND: a cache entry whose body is an integer became ``bytes(n)`` (n zero bytes served
    as the answer, or a MemoryError: a 500), an infinite age an OverflowError in ``Age``,
    deeply nested headers a RecursionError. Now each is a miss, counted as an error."""
    async with fake_redis(lambda _: answer) as state:
        cache = RedisCache(state, {"default": "ns"})
        assert await cache.get(_ANY, "list_tables") is None
        assert state.errors == 1


# redis-py speaks RESP3 from 8 on, and opens with HELLO; before, with AUTH and PING, which
# these impostors answer as a Redis would (so they are up, rightly): nothing to find there.
_SENDS_HELLO = pytest.mark.skipif(
    int(redis.__version__.split(".")[0]) < 8, reason="this redis-py sends no HELLO"
)


@_SENDS_HELLO
async def test_a_redis_that_answers_hello_oddly_is_down_not_a_crash() -> None:
    """FOUND: a server answering ``HELLO`` with ``+OK`` (not Redis 6's map) made the client
    raise AttributeError, which escaped ``SharedState.start`` (the proxy failed to start with
    a traceback) and would have escaped a request's call. Now it is down, and says why."""

    async with resp_server(lambda _: b"+OK\r\n", hello=b"+OK\r\n") as port:
        url = URL(f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
        state = SharedState(SharedStateConfig(url), Supervisor())
        try:
            await state.start()
            assert not state.up and state.problem is not None
            assert "AttributeError" in state.problem and PASSWORD not in state.problem
            assert await state.call(lambda redis: redis.ping()) is None
        finally:
            await state.close()


@_SENDS_HELLO
async def test_a_proxy_on_a_redis_impostor_answers_every_request(
    gateway: Gateway, proxy_factory: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """FOUND, whole: on a server that answers HELLO as Redis 6 does and every script with a
    grant after forever, a job creation hung; on one that answers HELLO with +OK, the proxy
    failed to start. Now: every request answered; the first counts errors (its answers are
    not understood), the second is down in /-/status; the password is nowhere."""
    caplog.set_level(logging.DEBUG)
    forever = array(b":1\r\n", _bulk(b"inf"))
    async with (
        resp_server(lambda _: forever) as good_hello,
        resp_server(lambda _: forever, hello=b"+OK\r\n") as bad_hello,
    ):
        for port, up in ((good_hello, 1), (bad_hello, 0)):
            url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
            proxy = await proxy_factory(gateway.url, **shaped(DAP_PROXY_SHARED_STATE=url))
            for _ in range(2):
                assert (await asyncio.wait_for(create_job(proxy), 5))[0] in (200, 202)
                assert (await asyncio.wait_for(get(proxy, TABLES), 5))[0] == 200
            async with proxy.http.get(proxy.url + "/-/status") as response:
                status = await response.text()
            async with proxy.http.get(proxy.url + "/-/metrics") as response:
                metrics = await response.text()
            assert plain(metrics, "proxy_shared_state_up") == up
            assert plain(metrics, "proxy_shared_state_errors_total") >= 1
            assert PASSWORD not in status + metrics + caplog.text


@pytest.mark.parametrize(
    "garbage",
    [b":abc\r\n", b"$abc\r\n", b"?\r\n", b"*-5\r\n", b"*99999999999\r\n", b"$5\r\nab\r\n", b""],
)
async def test_garbage_resp_is_a_miss_within_the_timeout(garbage: bytes) -> None:
    """HELD: malformed RESP, a length never sent, an answer cut short: ``None`` within the
    100 ms timeout (a wait_for of 5 s would catch a hang), never an exception."""
    async with fake_redis(lambda _: garbage) as state:
        budgets = RedisBudgets(state, {"default": "ns"})
        found = await asyncio.wait_for(budgets.reserve("default", "create_job", 5, 61.2, 60), 5)
        assert found is None


# --- Relay targets: addresses that reach the inside by another name -----------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1: AWS's IPv6-only subnets reach it
        ("64:ff9b::a9fe:a9fe", "link-local"),  # NAT64 of the metadata address
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b:1::a00:1", "NAT64"),  # RFC 8215's local-use prefix
        ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
        ("::10.0.0.1", "private"),  # IPv4-compatible
        ("::ffff:169.254.169.254", "link-local"),  # IPv4-mapped (held before)
    ],
)
def test_ipv6_forms_of_inside_ipv4_addresses_are_refused(address: str, kind: str) -> None:
    """FOUND: Python calls 64:ff9b::10.0.0.1, 2002:0a00:0001:: and ::10.0.0.1 global, so a
    storage name resolving to one (a gateway's DNS, or DNS64) was connected to: through a
    NAT64 gateway, the intranet. Now the IPv4 address they reach is judged."""
    problem = address_problem(address)
    assert problem is not None and kind in problem


def test_ipv6_forms_of_public_ipv4_addresses_stay_allowed() -> None:
    """DNS64 gives S3's public addresses as 64:ff9b::<ipv4>: an IPv6-only host still relays."""
    for address in ("64:ff9b::3419:101", "2002:3419:101::1", "52.25.1.1", "2600:1f18::1"):
        assert address_problem(address) is None, address


async def test_the_resolver_refuses_a_name_for_a_nat64_intranet_address() -> None:
    class DNS64(AbstractResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            return [
                ResolveResult(
                    hostname=host, host=address, port=port, family=socket.AF_INET6, proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
                for address in ("64:ff9b::3419:101", "64:ff9b::a00:1")
            ]  # fmt: skip

        async def close(self) -> None:
            pass

    resolver = GuardedResolver()
    resolver._resolver = DNS64()  # the name service: what a hostile DNS answers
    try:
        with pytest.raises(RefusedAddress, match=r"storage.example resolves to 64:ff9b::a00:1"):
            await resolver.resolve("storage.example", 443, socket.AF_UNSPEC)
    finally:
        await resolver.close()


@pytest.mark.parametrize(
    "url",
    [
        "https://evil-example.com/k",  # a suffix, not a subdomain
        "https://example.com.evil.net/k",
        "https://xn--exmple-4nf.com/k",  # "example.com" with a Cyrillic "a", in punycode
        "https://example.com%2eevil.net/k",
        "https://0x7f000001/k",
        "https://017700000001/k",
        "https://[::ffff:7f00:1]/k",
        "https://localhost./k",
        "https://example.com@evil.net/k",
    ],
)
def test_relay_hosts_suffix_and_ip_tricks_are_refused(url: str) -> None:
    """HELD: relay_hosts ``example.com`` admits its subdomains only, however disguised."""
    assert target_problem(URL(url, encoded=True), UPSTREAM, ("example.com",)) is not None


def test_relay_hosts_ignores_case_and_a_trailing_dot() -> None:
    """HELD: the same host written otherwise is still under relay_hosts."""
    for url in ("https://S3.Example.COM/k", "https://s3.example.com./k"):
        assert target_problem(URL(url, encoded=True), UPSTREAM, (".example.com.",)) is None


# --- Object-URL answers a gateway should never give ---------------------------------------

SIGNED = b"https://storage.example/k?X-Amz-Signature=SIGNATURE-NEVER-SHOWN"


def _urls(tail: bytes = b"") -> bytes:
    return b'{"urls": {"a": {"url": "' + SIGNED + b'"}}' + tail + b"}"


@pytest.mark.parametrize(
    ("body", "encoding", "status", "words"),
    [
        # FOUND: a RecursionError, a 500 ("the proxy failed to handle the request").
        (_urls(b', "x": ' + b"[" * 100_000 + b"]" * 100_000), None, 502, "nested too deeply"),
        # HELD: a gzip bomb (16 MiB of spaces in 16 KiB) stops at the 4 MiB bound.
        (gzip.compress(b" " * (16 * 1024 * 1024), 9), "gzip", 502, "larger than"),
        # HELD: not JSON at all: passed as it is (no URL in it the relay could know as one).
        (b"<html>maintenance</html>", None, 200, "maintenance"),
    ],
)
async def test_hostile_object_url_answers(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    body: bytes,
    encoding: str | None,
    status: int,
    words: str,
) -> None:
    @web.middleware
    async def answer(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "POST" and request.path == "/dap/object/url":
            headers = {"Content-Encoding": encoding} if encoding else {}
            return web.Response(body=body, content_type="application/json", headers=headers)
        response: web.StreamResponse = await handler(request)
        return response

    gateway = await gateway_factory(lambda app: app.middlewares.append(answer))
    proxy = await proxy_factory(gateway.url, DAP_PROXY_OBJECT_RELAY="true")
    async with proxy.http.post(proxy.url + "/dap/object/url", json=[{"id": "x"}]) as response:
        text = await response.text()
        assert response.status == status, text[:300]
    assert words in text and "SIGNATURE-NEVER-SHOWN" not in text


# --- Local tokens and the throttle --------------------------------------------------------

SIGNING = {"default": b"d" * 32, "yale": b"y" * 32}


def _hs256(header: dict[str, Any], claims: dict[str, Any], key: bytes) -> str:
    """A JWT with any header at all (PyJWT refuses to write a kid that is not a string)."""

    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signed = f"{part(header)}.{part(claims)}"
    signature = hmac.new(key, signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS512's forgery
def test_local_tokens_under_another_algorithm_or_an_odd_kid_are_refused() -> None:
    """HELD: the right key under HS512/HS384, a kid that is not a string, a kid naming
    another profile's key for this profile, a token naming no profile under a profile's key:
    each refused with why, never verified by the header's choice."""
    issuer = LocalTokenIssuer()
    issuer.rekey(SIGNING)
    real = issuer.issue("tool", "default")
    kid = jwt.get_unverified_header(real)["kid"]
    claims = jwt.decode(real, options={"verify_signature": False})
    yale_kid = jwt.get_unverified_header(issuer.issue("tool", "yale"))["kid"]
    forged = [
        jwt.encode(claims, SIGNING["default"], algorithm=alg, headers={"kid": kid})
        for alg in ("HS512", "HS384")
    ] + [
        _hs256({"alg": "HS256", "typ": "JWT", "kid": odd}, claims, SIGNING["default"])
        for odd in ([kid], 7, None, yale_kid)
    ]  # fmt: skip
    no_profile = {key: value for key, value in claims.items() if key != "prof"}
    forged.append(jwt.encode(no_profile, SIGNING["default"], "HS256", headers={"kid": kid}))
    for token in forged:
        assert issuer.check(token) in (MALFORMED, UNKNOWN_KEY, BAD_SIGNATURE), token
    assert isinstance(issuer.check(real), LocalClaims)


def test_filling_the_verified_token_cache_costs_a_caller_only_a_signature_check() -> None:
    """HELD: 5000 distinct valid tokens (anyone may log in when no credential is required)
    evict a caller's verified token from the 4096-entry cache; its next request is checked
    again and admitted with its own profile, as before."""
    issuer = LocalTokenIssuer()
    issuer.rekey(SIGNING)
    access = AccessControl(AccessConfig(), issuer)
    mine = issuer.issue("me", "yale")
    assert access.admit(f"Bearer {mine}") == Caller(None, "yale")
    for number in range(5000):
        assert isinstance(access.admit(f"Bearer {issuer.issue(str(number), 'default')}"), Caller)
    assert len(access._verified) <= 4096
    assert access.admit(f"Bearer {mine}") == Caller(None, "yale")


def test_the_throttle_and_the_shares_see_one_address_however_written() -> None:
    """HELD: an IPv4 address and its IPv4-mapped IPv6 form (a dual-stack socket) are one
    caller for the failed-login throttle and the connection shares; an IPv6 /64 is one."""
    for written in ("192.0.2.7", "::ffff:192.0.2.7", "::ffff:c000:207"):
        assert address_key(written) == "192.0.2.7"
        assert address_group((written, 1)) == "192.0.2.7"
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1%eth0")
    assert address_key("2001:db8::1") != address_key("2001:db8:0:1::1")


# --- /-/relay/<id> with no credentials ----------------------------------------------------


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)  # a hang guard only
    finally:
        writer.close()


async def test_hostile_relay_requests_reach_nothing_and_tell_nothing(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    aiohttp_server: Any,
    tmp_path: Path,
) -> None:
    """HELD: a 100 KB id (414), traversal in the clear and percent-encoded, padding, a
    changed last character, other methods on a real id: refused without a request to
    storage, and no answer names storage's host or the signature. The same real id fetched
    20 times at once: 20 whole objects, and the relay still holds its one key, nothing per id."""
    storage = await start_storage(aiohttp_server, tmp_path)
    egress = ConnectProxy()
    await egress.start()
    try:
        await _hostile_relay_requests(gateway_factory, proxy_factory, storage, egress)
    finally:
        await egress.close()


async def _hostile_relay_requests(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress: ConnectProxy,
) -> None:
    _, proxy = await relay_proxy(gateway_factory, proxy_factory, storage, egress)
    _, url = await object_url(proxy)
    relay_id = URL(url).parts[-2]
    changed = relay_id[:-9] + ("B" if relay_id[-9] != "B" else "C") + relay_id[-8:]
    port = URL(proxy.url).port
    assert port is not None
    cases = [
        (b"GET", b"/-/relay/" + b"A" * 100_000, 414),
        (b"GET", b"/-/relay/../status", 404),
        (b"GET", b"/-/relay/%2e%2e/status", 404),
        (b"GET", b"/-/relay/" + relay_id.encode() + b"%2F..%2F..%2Fstatus", 404),
        (b"GET", b"/-/relay/" + relay_id.encode() + b"==", 404),
        (b"HEAD", b"/-/relay/" + changed.encode(), 404),
        (b"GET", b"/-/relay/" + changed.encode(), 404),
        (b"POST", b"/-/relay/" + relay_id.encode(), 404),
        (b"DELETE", b"/-/relay/" + relay_id.encode(), 404),
    ]
    for method, target, status in cases:
        head = b"%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n"
        answer = await _raw(port, head % (method, target, port))
        assert answer.startswith(b"HTTP/1.1 %d " % status), (method, target[:80], answer[:80])
        for secret in (HOST.encode(), b"X-Amz", b"abc%2Fdef", b"uptime"):
            assert secret not in answer.partition(b"\r\n\r\n")[2], (target[:80], secret)
    assert storage.seen == []
    relay = proxy.running.runner.app[RELAY]
    held = relay.held()

    async def fetch() -> bytes:
        async with proxy.http.get(url) as response:
            assert response.status == 200
            return await response.read()

    assert await asyncio.gather(*(fetch() for _ in range(20))) == [DATA] * 20
    assert relay.held() == held == 1


@pytest.mark.parametrize("length", [40, 41, 42])  # ids of every length modulo 4 but one
def test_a_relay_id_has_one_text(length: int) -> None:
    """FOUND: the last character of an id whose length is not a multiple of 4 has unused low
    bits; changing them gave the same bytes, so a changed id opened (harmless: the same
    object, but "any change is refused" was not so). Now only the id as sealed opens."""
    ring = KeyRing({"default": "s" * 32})
    relay_id = ring.seal(Sealed("https://s.example/" + "k" * length, "default", 2**40))
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    last = alphabet[alphabet.index(relay_id[-1]) ^ 1]  # the lowest bit: unused when present
    assert ring.open(relay_id, 0).url.endswith("k" * length)
    with pytest.raises(SealUnknown):
        ring.open(relay_id[:-1] + last, 0)


# --- Fairness: the floor is the client's pace, never the gateway's ------------------------


async def test_min_request_rate_never_cuts_an_upload_the_gateway_reads_slowly(
    gateway_factory: GatewayFactory, proxy_factory: ProxyFactory
) -> None:
    """HELD: the client sends 8 MiB at once (past every socket buffer); the gateway reads
    it at about 3 MB/s, under a floor of 10 MB/s over 0.2 s. The proxy holds the client's
    bytes back (reading paused), which is not the client's pace: the upload goes through
    whole, streamed. (With the pause not counted, it is cut with a 408.)"""
    read: list[int] = []

    @web.middleware
    async def slow_sink(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/test/slow-sink":
            response: web.StreamResponse = await handler(request)
            return response
        total = 0
        while chunk := await request.content.read(65536):
            total += len(chunk)
            await asyncio.sleep(0.02)
        read.append(total)
        return web.json_response({"read": total})

    gateway = await gateway_factory(lambda app: app.middlewares.append(slow_sink))
    proxy = await proxy_factory(
        gateway.url,
        DAP_PROXY_MIN_REQUEST_RATE="10000000",
        DAP_PROXY_MIN_REQUEST_RATE_WINDOW="0.2",
        DAP_PROXY_REPLAY_BODY_LIMIT="10",  # streamed to the gateway as it comes
    )
    body = b"x" * (8 * 1024 * 1024)
    async with proxy.http.post(proxy.url + "/test/slow-sink", data=io.BytesIO(body)) as response:
        assert response.status == 200, await response.text()
    assert read == [len(body)]


# --- Reload: overlapping reloads apply in order -------------------------------------------


async def test_a_slow_reload_never_restores_a_key_a_newer_one_revoked(keyed: Keyed) -> None:
    """FOUND: a reload whose files were read first (a slow mount) applied after a newer one
    that had already removed a key: the revoked key worked again. Now reloads read and apply
    one at a time, in order, and a burst of SIGHUPs queues one reload at most."""
    release = threading.Event()
    calls = 0

    def load() -> Config:
        nonlocal calls
        calls += 1
        config = keyed.load()
        if calls == 1:  # read before the key was revoked, then held up (in its thread)
            release.wait(10)
        return config

    reloader = Reloader(keyed.running.runner.app, keyed.load(), load, interval=60)
    older = asyncio.ensure_future(reloader.reload_off_loop())
    await until(lambda: calls == 1)
    keyed.keys.write_text(f"{KEY}\n")  # OTHER revoked
    newer = asyncio.ensure_future(reloader.reload_off_loop())
    await asyncio.sleep(0.1)
    release.set()
    assert await older and await newer
    assert await keyed.status(OTHER) == 401
    assert await keyed.status(KEY) == 200
    for _ in range(10):
        reloader._reload_on_signal()
    assert len(reloader._signalled_tasks) == 2
    await asyncio.gather(*reloader._signalled_tasks)
