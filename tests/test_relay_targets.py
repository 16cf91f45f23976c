"""Issue 19, item 12: the relay fetches only storage. An object URL that is not ``https``,
carries userinfo, names an IP address or a host outside ``relay_hosts`` is refused when the
gateway's answer is rewritten (502, no URL handed out: fail closed); a name that resolves to
a loopback, link-local or private address is refused when connecting directly, on the
addresses the connection would use. The upstream's own origin is the one exception."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from aiohttp import web
from yarl import URL

from proxy.sharing.relay_targets import (
    GuardedResolver,
    RefusedAddress,
    address_problem,
    target_problem,
)

from .conftest import GatewayFactory, ProxyFactory
from .connect_proxy import ConnectProxy
from .relay_support import (
    DATA,
    HOST,
    OBJECT_ID,
    Storage,
    error_of,
    object_url,
    object_url_route,
    relay_proxy,
)

UPSTREAM = URL("http://127.0.0.1:9000")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://s3.example/b/k", "only https://"),
        ("https://user:pw@s3.example/b/k", "userinfo"),
        ("https://user@s3.example/b/k", "userinfo"),
        ("https://127.0.0.1/b/k", "IP address"),
        ("https://[::1]/b/k", "IP address"),
        ("https://169.254.169.254/latest/meta-data", "IP address"),
        ("https://2130706433/b/k", "IP address"),  # 127.0.0.1 to a resolver
        ("https://0x7f.1/b/k", "IP address"),
        ("https://127.1/b/k", "IP address"),
        ("http://127.0.0.1:9001/b/k", "only https://"),  # the upstream's host, another port
        ("https://127.0.0.1:9000/b/k", "IP address"),  # the upstream's host, another scheme
        ("ftp://s3.example/b/k", "only https://"),
    ],
)
def test_refused_targets(url: str, problem: str) -> None:
    found = target_problem(URL(url, encoded=True), UPSTREAM, ())
    assert found is not None and problem in found
    assert "pw" not in found


def test_allowed_targets_and_relay_hosts() -> None:
    assert target_problem(URL("https://s3.example/b/k?X-Amz-Signature=x"), UPSTREAM, ()) is None
    # The upstream's own scheme, host and port: the simulator serves objects there.
    assert target_problem(URL("http://127.0.0.1:9000/objects/x"), UPSTREAM, ()) is None
    hosts = (".s3.amazonaws.com", "storage.example.edu")
    for allowed in ("https://b.s3.amazonaws.com/k", "https://storage.example.edu/k"):
        assert target_problem(URL(allowed), UPSTREAM, hosts) is None
    for refused in ("https://s3.amazonaws.com.evil.example/k", "https://xstorage.example.edu/k"):
        found = target_problem(URL(refused), UPSTREAM, hosts)
        assert found is not None and "relay_hosts" in found


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
     "fe80::1", "fd00::1", "100.64.0.1", "0.0.0.0", "224.0.0.1", "::ffff:127.0.0.1"],  # noqa: S104
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    assert address_problem(address) is not None


def test_public_addresses_are_allowed() -> None:
    assert address_problem("52.216.1.1") is None
    assert address_problem("2600:1f18::1") is None


async def test_the_resolver_refuses_a_name_for_loopback() -> None:
    resolver = GuardedResolver()
    try:
        with pytest.raises(RefusedAddress, match=r"localhost resolves to .*loopback"):
            await resolver.resolve("localhost", 443, socket.AF_UNSPEC)
    finally:
        await resolver.close()


async def test_a_refused_target_fails_the_object_url_answer_without_leaking_it(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    _, proxy = await relay_proxy(gateway_factory, proxy_factory, storage, egress_proxy)
    for origin, why in (
        (f"http://{HOST}:{storage.port}", "only https://"),
        (f"https://user:pw@{HOST}:{storage.port}", "userinfo"),
        (f"https://127.0.0.1:{storage.port}", "IP address"),
        (f"https://[::1]:{storage.port}", "IP address"),
        ("https://169.254.169.254", "IP address"),
    ):
        storage.origin = origin
        status, headers, error = await error_of(
            proxy, "POST", proxy.url + "/dap/object/url", json=[{"id": OBJECT_ID}]
        )
        assert (status, error["type"]) == (502, "BadGateway"), origin
        assert why in error["message"] and "will not fetch" in error["message"]
        for secret in ("Signature", "abc", "pw", "X-Amz"):
            assert secret not in error["message"]
        assert headers["X-Request-Id"] == error["uuid"]
    assert storage.seen == [] and egress_proxy.seen == []


async def test_a_name_resolving_to_loopback_is_refused_when_connecting_directly(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No egress proxy: the proxy resolves, and refuses ``localhost`` (as it would a name
    an attacker points at 127.0.0.1 after a first, public answer)."""
    storage.origin = f"https://localhost:{storage.port}"
    _, proxy = await relay_proxy(gateway_factory, proxy_factory, storage, None)
    _, url = await object_url(proxy)  # a host name: sealed; its addresses are checked later
    caplog.set_level("INFO", "proxy.access")
    status, _, error = await error_of(proxy, "GET", url)
    assert (status, error["type"]) == (502, "BadGateway")
    assert "localhost resolves to" in error["message"] and "loopback" in error["message"]
    assert storage.seen == []
    lines = [r.getMessage() for r in caplog.records if r.name == "proxy.access"]
    assert any(" 502 " in line and "up=storage:refused" in line for line in lines), lines


async def test_relay_hosts_narrows_the_targets(
    gateway_factory: GatewayFactory,
    proxy_factory: ProxyFactory,
    storage: Storage,
    egress_proxy: ConnectProxy,
) -> None:
    _, proxy = await relay_proxy(
        gateway_factory,
        proxy_factory,
        storage,
        egress_proxy,
        DAP_PROXY_RELAY_HOSTS=".s3.amazonaws.com",
    )
    status, _, error = await error_of(
        proxy, "POST", proxy.url + "/dap/object/url", json=[{"id": OBJECT_ID}]
    )
    assert status == 502 and "relay_hosts (DAP_PROXY_RELAY_HOSTS)" in error["message"]
    _, allowed = await relay_proxy(
        gateway_factory, proxy_factory, storage, egress_proxy, DAP_PROXY_RELAY_HOSTS=HOST
    )
    _, url = await object_url(allowed)
    async with allowed.http.get(url) as response:
        assert response.status == 200 and await response.read() == DATA


async def test_the_upstreams_own_origin_is_allowed_over_http_and_loopback(
    gateway_factory: GatewayFactory, proxy_factory: ProxyFactory, storage: Storage
) -> None:
    """As the simulator serves objects: from its own ``http://127.0.0.1:<port>``."""
    fetched: list[str] = []

    @web.middleware
    async def own_objects(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/bucket/"):
            fetched.append(request.raw_path)
            return web.Response(body=DATA, content_type="application/octet-stream")
        response: web.StreamResponse = await handler(request)
        return response

    def prepare(app: web.Application) -> None:
        object_url_route(storage)(app)
        app.middlewares.insert(0, own_objects)  # outermost: no bearer needed, as storage

    gateway = await gateway_factory(prepare)
    storage.origin = gateway.url
    proxy = await proxy_factory(gateway.url, DAP_PROXY_OBJECT_RELAY="true")
    _, url = await object_url(proxy)
    async with proxy.http.get(url) as response:
        assert response.status == 200 and await response.read() == DATA
    assert len(fetched) == 1 and fetched[0].startswith(f"/bucket/{OBJECT_ID}?")
