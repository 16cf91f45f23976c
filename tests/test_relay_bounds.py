"""Issue 19, items 4 and 11: the relay holds nothing per URL, and answers taken whole are
read whole, in a loop, up to their bound.

Before: 700 object-URL calls of 150 long URLs made 104,100 relay ids (RSS 50 -> 244 MiB) and
evicted another caller's id; ``read(MAX+1)`` returned part of a ~300 KB chunked answer, so
its storage URLs went out unrewritten, and 900 KB schemas were never cached.
"""

from __future__ import annotations

import json
import types
from collections import deque
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.config import Config
from proxy.observe.metrics import Metrics
from proxy.server.keys import RELAY

from .conftest import GatewayFactory, ProxyFactory
from .connect_proxy import ConnectProxy
from .relay_support import DATA, HOST, OBJECT_ID, Storage, error_of, object_url, relay_proxy

KEY_A = "relay-key-a-0123456789"
KEY_B = "relay-key-b-0123456789"
SCHEMA_PATH = "/dap/query/canvas/table/accounts/schema"


def _reachable(root: object) -> int:
    """Objects reachable from ``root`` through containers and attributes, leaving out the
    shared machinery (sessions, metrics, configuration, functions)."""
    skipped = (aiohttp.ClientSession, Metrics, Config, types.FunctionType, types.MethodType)
    seen: set[int] = set()
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, skipped):
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple | set | frozenset | deque):
            stack += list(item)
        elif hasattr(item, "__dict__"):
            stack += list(vars(item).values())
    return len(seen)


async def test_many_object_url_calls_leave_no_state_and_others_urls_work(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    """150 long URLs a call (a session token's worth of query each), 200 calls: 30,000
    relay URLs, and the relay holds what it held before; a URL another caller got first
    still downloads. (Scaled from the attack's 700 calls: the state is none either way.)"""
    _, proxy = await relay_proxy(
        gateway_factory,
        proxy_factory,
        storage,
        egress_proxy,
        DAP_PROXY_ACCESS_KEYS=f"{KEY_A},{KEY_B}",
    )
    relay = proxy.running.runner.app[RELAY]
    _, first = await object_url(proxy, KEY_A)
    held, reachable = relay.held(), _reachable(relay)
    storage.count, storage.pad = 150, 900
    headers = {"Authorization": f"Bearer {KEY_B}"}
    for _ in range(200):
        async with proxy.http.post(
            proxy.url + "/dap/object/url", json=[{"id": OBJECT_ID}], headers=headers
        ) as response:
            urls = json.loads(await response.read())["urls"]
        assert len(urls) == 150
    assert len(next(iter(urls.values()))["url"]) > 1000
    assert relay.held() == held == 1  # one key, whatever was sealed
    assert _reachable(relay) == reachable
    async with proxy.http.get(first) as response:
        assert response.status == 200
        assert await response.read() == DATA


async def test_a_300_kb_chunked_object_url_answer_is_rewritten_whole(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    storage.count, storage.pad, storage.chunked = 200, 1400, True
    _, proxy = await relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    async with proxy.http.post(proxy.url + "/dap/object/url", json=[{"id": OBJECT_ID}]) as r:
        assert r.status == 200
        urls = [entry["url"] for entry in json.loads(await r.read())["urls"].values()]
    assert len(json.dumps(storage.document())) > 300_000
    assert len(urls) == 200
    assert all(url.startswith(proxy.url + "/-/relay/") for url in urls)
    async with proxy.http.get(urls[-1]) as response:
        assert response.status == 200 and await response.read() == DATA


@pytest.mark.parametrize("chunked", [True, False])
async def test_an_object_url_answer_over_the_bound_is_a_502_naming_it(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
    chunked: bool,
) -> None:
    """Never the raw storage URLs: a client that could use them would not need the relay."""
    storage.count, storage.pad, storage.chunked = 220, 20_000, chunked
    _, proxy = await relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    status, _, error = await error_of(
        proxy, "POST", proxy.url + "/dap/object/url", json=[{"id": OBJECT_ID}]
    )
    assert (status, error["type"]) == (502, "BadGateway")
    assert "4 MiB" in error["message"] and "MAX_FILTERED_BODY" in error["message"]
    assert HOST not in error["message"]


async def test_a_900_kb_chunked_schema_reaches_the_cache_whole(
    gateway_factory: GatewayFactory, proxy_factory: ProxyFactory
) -> None:
    schema = json.dumps({"schema": {"x": "y" * 900_000}}).encode()
    asked: list[str] = []

    @web.middleware
    async def big_schema(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != SCHEMA_PATH:
            response: web.StreamResponse = await handler(request)
            return response
        asked.append(request.path)
        answer = web.StreamResponse(headers={"Content-Type": "application/json"})
        answer.enable_chunked_encoding()
        await answer.prepare(request)
        for start in range(0, len(schema), 8192):
            await answer.write(schema[start : start + 8192])
        await answer.write_eof()
        return answer

    gateway = await gateway_factory(lambda app: app.middlewares.append(big_schema))
    proxy = await proxy_factory(gateway.url, DAP_PROXY_CACHE_ENABLED="true")
    bodies = []
    for _ in range(2):
        async with proxy.http.get(proxy.url + SCHEMA_PATH) as response:
            assert response.status == 200
            bodies.append(await response.read())
            age = response.headers.get("Age")
    assert bodies == [schema, schema]
    assert asked == [SCHEMA_PATH]  # the second from the cache
    assert age is not None


async def test_a_long_storage_url_relays_and_one_too_long_to_request_is_refused(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    """A relay URL's request line must fit the server's limit: a storage URL that would not
    is a 502 naming its length, rather than a URL that could only ever get a 414."""
    storage.pad = 3000  # a session token's worth and more
    _, proxy = await relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    _, url = await object_url(proxy)
    assert len(url) > 4000
    async with proxy.http.get(url) as response:
        assert response.status == 200 and await response.read() == DATA
    storage.pad = 6000
    status, _, error = await error_of(
        proxy, "POST", proxy.url + "/dap/object/url", json=[{"id": OBJECT_ID}]
    )
    assert status == 502 and "too long to relay" in error["message"]
