"""Foundations (issue 10): routing reads path and query apart, background work never hangs
or dies silently, reload compares with what runs, a cancelled replay releases its 401, and
the package has no import cycles. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.cli import main as cli
from proxy.config import Config, load_config
from proxy.errors import ConfigError, TokenEndpointUnavailable
from proxy.server.keys import FORWARDERS, SUPERVISOR
from proxy.server.reload import Reloader
from proxy.server.serve import RunningProxy, start
from proxy.simulator import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, SIMULATOR_STATE
from proxy.tokens.manager import TokenManager
from proxy.tokens.token import Token
from proxy.upstream.token_client import TokenClient

from .conftest import Gateway, GatewayFactory, ProxyFactory

TABLES = "/dap/query/canvas/table"
ECHO = "/test/echo/x"  # a gateway test route, outside the rate budgets
LOGIN = "/ids/auth/login"


def seen_since(gateway: Gateway, before: int) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in list(gateway.state.requests)[before:]]


async def until(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    """Wait for ``condition``; the bound is a hang guard, not a timing assertion."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - polling state no event announces
            await asyncio.sleep(0.01)
    assert condition(), what


# ====================================================================== 9. routing


async def test_a_query_never_reads_as_a_profile(
    gateway_factory: GatewayFactory, proxy_factory: ProxyFactory
) -> None:
    default, yale = await gateway_factory(), await gateway_factory()
    proxy = await proxy_factory(
        default.url,
        DAP_PROXY_PROFILE_YALE_CLIENT_ID=DEMO_CLIENT_ID,
        DAP_PROXY_PROFILE_YALE_CLIENT_SECRET=DEMO_CLIENT_SECRET,
        DAP_PROXY_PROFILE_YALE_UPSTREAM=yale.url,
    )
    before = len(default.state.requests), len(yale.state.requests)
    async with proxy.http.get(proxy.url + "/dap?next=/x") as resp:
        body = await resp.read()
    assert b"UnknownProfile" not in body
    assert seen_since(default, before[0]) == [("GET", "/dap?next=/x")]

    async with proxy.http.get(proxy.url + "/yale?a=/b") as resp:
        await resp.read()
    assert seen_since(yale, before[1]) == [("GET", "/?a=/b")]
    assert seen_since(default, before[0] + 1) == []

    async with proxy.http.get(proxy.url + "/nobody?yale=/dap") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["type"] == "UnknownProfile"


# ====================================================================== 10. no silent hangs


class Breakable:
    """A token source that raises ``RuntimeError`` while ``broken``."""

    def __init__(self) -> None:
        self.broken = True
        self.calls = 0

    async def __call__(self) -> Token:
        self.calls += 1
        if self.broken:
            raise RuntimeError("a bug in the token source")
        now = asyncio.get_running_loop().time()
        return Token(f"token-{self.calls}", obtained_at=now, expires_at=now + 3600)


class LoopClock:
    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def time(self) -> float:
        return self.monotonic()


async def test_a_source_raising_an_unexpected_error_fails_waiters_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = Breakable()
    tokens = TokenManager(source, clock=LoopClock(), backoff_base=0.02, backoff_cap=0.05)
    try:
        await tokens.start()
        with pytest.raises(TokenEndpointUnavailable) as raised:
            await asyncio.wait_for(tokens.token(), 10)  # a hang guard only
        assert "RuntimeError" in raised.value.message
        assert "a bug" not in raised.value.text, "the error's own text is not shown"
        assert tokens.state.error is not None and "RuntimeError" in tokens.state.error.message
        await until(lambda: source.calls >= 2, "retried")
        source.broken = False
        token = await asyncio.wait_for(_token_eventually(tokens), 10)
        assert token.access_token.startswith("token-")
        assert tokens.ready and tokens.state.error is None
    finally:
        await tokens.close()
    for record in caplog.records:
        assert "a bug in the token source" not in record.getMessage()


async def _token_eventually(tokens: TokenManager) -> Token:
    while True:
        try:
            return await tokens.token()
        except TokenEndpointUnavailable:
            await asyncio.sleep(0.01)


async def test_a_proxy_whose_token_fetch_raises_starts_and_recovers(
    gateway: Gateway, proxy_factory: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    fetch = TokenClient.fetch
    broken = [True]

    async def flaky(self: TokenClient) -> Token:
        if broken[0]:
            raise RuntimeError("unforeseen")
        return await fetch(self)

    monkeypatch.setattr(TokenClient, "fetch", flaky)
    # first_token must not hang: proxy_factory awaits it.
    proxy = await asyncio.wait_for(proxy_factory(gateway.url), 10)
    async with proxy.http.get(proxy.url + "/-/ready") as resp:
        assert resp.status == 503
        message = (await resp.json())["error"]["message"]
    assert "RuntimeError" in message
    assert "unforeseen" not in message
    async with proxy.http.get(proxy.url + ECHO) as resp:
        assert resp.status == 503
        assert (await resp.json())["error"]["type"] == "TokenEndpointUnavailable"
    broken[0] = False

    async def served() -> None:
        while True:
            async with proxy.http.get(proxy.url + ECHO) as resp:
                if resp.status == 200:
                    return

            await asyncio.sleep(0.05)

    await asyncio.wait_for(served(), 20)  # backoff: 1 s, then 2 s; a hang guard only


def test_a_client_id_with_a_colon_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("DAP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DAP_CLIENT_ID", "us-east-1:x")
    monkeypatch.setenv("DAP_CLIENT_SECRET", "a-secret-value")
    # load_config first: were it accepted, serve would run until a signal.
    with pytest.raises(ConfigError, match="client_id"):
        load_config(None, {"DAP_CLIENT_ID": "us-east-1:x", "DAP_CLIENT_SECRET": "s"})
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "client_id" in err
    assert "must not contain ':'" in err
    assert "a-secret-value" not in err


# ====================================================================== 11. reload


def write_config(path: Path, gateway: Gateway, yale_secret: str | None, read: int = 300) -> None:
    text = (
        f"client_id: {json.dumps(DEMO_CLIENT_ID)}\n"
        f"client_secret: {json.dumps(DEMO_CLIENT_SECRET)}\n"
        f"upstream: {gateway.url}\n"
        f"timeouts: {{read: {read}, shutdown: 1}}\n"
    )
    if yale_secret is not None:
        text += (
            "profiles:\n"
            f"  yale: {{client_id: {json.dumps(DEMO_CLIENT_ID)}, "
            f"client_secret: {yale_secret}, upstream: {gateway.url}}}\n"
        )
    # A new size as well as a new mtime: the watcher must see every write.
    text += "#" * (len(text) % 7 + (hash(yale_secret) % 5) + read % 11) + "\n"
    path.write_text(text)


@pytest.fixture
async def from_file(gateway: Gateway, tmp_path: Path) -> AsyncIterator[tuple[RunningProxy, Path]]:
    path = tmp_path / "proxy.yaml"
    write_config(path, gateway, None)
    running = await start(load_config(path, {}, {"listen": "127.0.0.1:0"}))
    await running.first_token()
    yield running, path
    await running.stop()


def loader(path: Path) -> Callable[[], Config]:
    return lambda: load_config(path, {}, {"listen": "127.0.0.1:0"})


async def test_a_profile_added_then_changed_asks_for_a_restart_and_does_not_break_reload(
    gateway: Gateway, from_file: tuple[RunningProxy, Path], caplog: pytest.LogCaptureFixture
) -> None:
    running, path = from_file
    config = loader(path)()
    reloader = Reloader(running.runner.app, config, loader(path), interval=0.05)
    write_config(path, gateway, "first-secret")
    assert reloader.reload()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("profiles.yale (added)" in w and "restart" in w for w in warnings), warnings
    write_config(path, gateway, "second-secret")
    assert reloader.reload()
    write_config(path, gateway, "second-secret", read=12)
    caplog.clear()
    assert reloader.reload()
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "timeouts.read" in warning
    assert "profiles.yale (added)" in warning, "still true until the restart"
    for record in caplog.records:
        assert "second-secret" not in record.getMessage()


async def test_new_credentials_of_a_running_profile_apply_live(
    gateway: Gateway, from_file: tuple[RunningProxy, Path]
) -> None:
    running, path = from_file
    reloader = Reloader(running.runner.app, loader(path)(), loader(path), interval=0.05)
    tokens = running.runner.app[FORWARDERS]["default"]._tokens  # private: the one in use
    held = await tokens.token()
    path.write_text(path.read_text().replace(DEMO_CLIENT_SECRET, "a-wrong-secret"))
    before = gateway.state.token_requests
    assert reloader.reload()
    await until(
        lambda: tokens.last_refresh is not None and gateway.state.token_requests > before, ""
    )
    await until(
        lambda: tokens.last_refresh is not None and tokens.last_refresh[1] == "rejected", ""
    )
    assert await tokens.token() is held, "the held token stays in use"


async def test_a_watcher_that_raises_is_recorded_logged_once_and_goes_on(
    gateway: Gateway, from_file: tuple[RunningProxy, Path], caplog: pytest.LogCaptureFixture
) -> None:
    running, path = from_file
    app = running.runner.app
    app[SUPERVISOR].restart_after = 0.05
    real = loader(path)
    loads: list[str] = []

    def load() -> Config:
        loads.append("load")
        if len(loads) == 1:
            raise RuntimeError("boom")
        return real()

    reloader = Reloader(app, real(), load, interval=0.05)
    watching = asyncio.create_task(reloader.run())
    try:
        write_config(path, gateway, "one")
        await until(lambda: "reload" in app[SUPERVISOR].problems, "the failure recorded")
        assert app[SUPERVISOR].problems["reload"].error == "RuntimeError"
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert "RuntimeError" in errors[0].getMessage()
        assert "boom" not in errors[0].getMessage()

        url = running.url
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/-/status") as resp:
                problems = (await resp.json())["problems"]
            assert [(p["task"], p["error"]) for p in problems] == [("reload", "RuntimeError")]
            async with http.get(url + "/-/ready") as resp:
                assert resp.status == 200
                assert (await resp.json())["problems"] == ["reload: RuntimeError"]

        write_config(path, gateway, "two")  # watching went on: this change is read
        await until(lambda: len(loads) >= 2, "a later change reloads")
        assert not watching.done()
    finally:
        watching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watching


# ====================================================================== 12. cancelled replay


async def test_a_first_401_is_released_when_the_client_leaves_during_the_replay(
    gateway_factory: GatewayFactory, proxy_factory: ProxyFactory, aiohttp_server: Any
) -> None:
    closed = asyncio.Event()

    def deny(app: web.Application) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            # A 401 whose body has not ended: its connection stays checked out until the
            # proxy releases the response (a short body would free it on its own).
            response = web.StreamResponse(status=401)
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(b'{"error": {"message": "no"')
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                closed.set()  # the proxy closed the connection
                raise
            return response

        app.router.add_get("/test/deny", handler)

    gateway = await gateway_factory(prepare=deny)
    release = asyncio.Event()
    asked = asyncio.Event()
    logins = [0]

    async def slow_login(request: web.Request) -> web.Response:
        # A token endpoint of its own port: the first token at once, the next one late.
        logins[0] += 1
        if logins[0] > 1:
            asked.set()
            await release.wait()
        token = gateway.app[SIMULATOR_STATE].issue_token()
        return web.json_response(
            {"access_token": token, "expires_in": 3600, "scope": "s", "token_type": "bearer"}
        )

    token_app = web.Application()
    token_app.router.add_post(LOGIN, slow_login)
    token_server = await aiohttp_server(token_app)
    proxy = await proxy_factory(gateway.url, DAP_PROXY_TOKEN_URL=str(token_server.make_url(LOGIN)))
    port = int(proxy.url.rsplit(":", 1)[1])
    gateway_port = int(gateway.url.rsplit(":", 1)[1])
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /test/deny HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(asked.wait(), 10)  # the proxy waits for the new token
    writer.close()  # the client hangs up meanwhile
    # The upstream pool (private attributes, read only: what is checked out per host).
    connector = proxy.running.runner.app[FORWARDERS]["default"]._session.connector
    assert connector is not None

    def held_to_gateway() -> int:
        per_host = connector._acquired_per_host
        return sum(len(v) for k, v in per_host.items() if k.port == gateway_port)

    await until(lambda: held_to_gateway() == 0, "the first 401's connection released")
    await asyncio.wait_for(closed.wait(), 10)  # a hang guard only
    release.set()
    async with proxy.http.get(proxy.url + TABLES) as resp:
        assert resp.status == 200
    await until(lambda: held_to_gateway() == 0, "nothing left checked out")


# ====================================================================== 13. imports


def test_serve_never_imports_the_simulator() -> None:
    code = (
        "import proxy.cli.main, proxy.server.serve, proxy.cli.token, sys; "
        "loaded = [m for m in sys.modules if m.startswith('proxy.simulator')]; "
        "assert not loaded, loaded"
    )
    result = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_a_new_default_secret_applies_live_and_asks_for_no_restart() -> None:
    """Only the settings that cannot change live are named: a rotated secret of the default
    profile is not one (a renamed Config field once made it look like one)."""
    from proxy.server.reload import restart_needed

    environ = {"DAP_CLIENT_ID": "us-east-1#a", "DAP_CLIENT_SECRET": "old-secret"}
    running = load_config(None, environ)
    rotated = load_config(None, environ | {"DAP_CLIENT_SECRET": "new-secret"})
    assert running.default_profile != rotated.default_profile  # the change is seen...
    assert restart_needed(running, rotated) == []  # ...and applies live
    moved = load_config(None, environ | {"DAP_PROXY_UPSTREAM": "https://elsewhere.example"})
    assert restart_needed(running, moved) == ["upstream", "token_url"]  # derived from it
