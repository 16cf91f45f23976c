"""Fixtures: the gateway simulator on a loopback port, and the proxy in front of it.

Everything here listens on 127.0.0.1 with an ephemeral port; nothing leaves the machine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.config import Config, load_config
from proxy.server.keys import TOKENS
from proxy.server.serve import RunningProxy, start
from proxy.simulator import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    SIMULATOR_STATE,
    SimulatorSettings,
    SimulatorState,
    create_simulator_app,
)
from proxy.tokens.manager import TokenManager

from .gateway_routes import Hangups, add_test_routes

# The object relay's fixtures (storage, egress_proxy), for every relay test module.
pytest_plugins = ("tests.relay_support",)


@dataclass
class Gateway:
    """The simulator as the tests see it: its URL, its state and fault knobs."""

    url: str
    app: web.Application
    hangups: Hangups

    @property
    def state(self) -> SimulatorState:
        return self.app[SIMULATOR_STATE]


@dataclass
class Proxy:
    """A running proxy: ``url``, its token manager, and a client session pointed at it."""

    url: str
    running: RunningProxy
    http: aiohttp.ClientSession

    @property
    def tokens(self) -> TokenManager:
        return self.running.runner.app[TOKENS]["default"]


def proxy_config(gateway_url: str, **env: str) -> Config:
    environ = {
        "DAP_CLIENT_ID": DEMO_CLIENT_ID,
        "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET,
        "DAP_PROXY_TIMEOUTS_SHUTDOWN": "2",
        # Rate shaping and the metadata cache are on by default; suites about other things
        # count what reaches the gateway, so they are off here unless a test turns them on
        # (tests/test_sharing.py).
        "DAP_PROXY_RATE_LIMITS_ENABLED": "false",
        "DAP_PROXY_CACHE_ENABLED": "false",
        **env,
    }
    return load_config(None, environ, {"listen": "127.0.0.1:0", "upstream": gateway_url})


GatewayFactory = Callable[..., Coroutine[Any, Any, Gateway]]
ProxyFactory = Callable[..., Coroutine[Any, Any, Proxy]]


@pytest.fixture
def gateway_factory(aiohttp_server: Any) -> GatewayFactory:
    async def make(
        prepare: Callable[[web.Application], None] | None = None, **settings: Any
    ) -> Gateway:
        """A simulator with ``settings``; ``prepare`` may add routes before it starts."""
        settings.setdefault("rate_limits", False)
        app = create_simulator_app(SimulatorSettings(**settings))
        hangups = Hangups()
        add_test_routes(app, hangups)
        if prepare is not None:
            prepare(app)
        server = await aiohttp_server(app)  # TestServer cancels handlers on hang-up
        return Gateway(str(server.make_url("")).rstrip("/"), app, hangups)

    return make


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> Gateway:
    return await gateway_factory()


@pytest.fixture
async def proxy_factory() -> AsyncIterator[ProxyFactory]:
    started: list[Proxy] = []

    async def make(gateway_url: str, *, wait_for_token: bool = True, **env: str) -> Proxy:
        running = await start(proxy_config(gateway_url, **env))
        if wait_for_token:
            await running.first_token()
        http = aiohttp.ClientSession(auto_decompress=False)
        proxy = Proxy(running.url, running, http)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        await proxy.http.close()
        await proxy.running.stop()


@pytest.fixture
async def proxy(gateway: Gateway, proxy_factory: ProxyFactory) -> Proxy:
    return await proxy_factory(gateway.url)
