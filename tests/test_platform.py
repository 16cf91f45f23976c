"""Windows (and macOS): the commands' main paths with the POSIX-only calls taken away.

On Windows, ``signal.SIGHUP`` does not exist, the event loops have no
``add_signal_handler`` (it raises ``NotImplementedError``), there are no Unix sockets, and
``st_mode`` says nothing about who may read a file. The ``windows`` fixture takes those
away here and sets ``sys.platform`` to ``win32``, then ``serve``, ``demo``, ``simulate`` and
``token`` run as they would there, stopped by Ctrl-C (a real SIGINT, which reaches the
``signal.signal`` fallback). Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy import __version__
from proxy.cli import demo
from proxy.cli import token as token_command
from proxy.config import load_config
from proxy.errors import ConfigError
from proxy.server import serve as server
from proxy.server import signals
from proxy.server.keys import TOKEN_CLIENTS
from proxy.server.reload import Reloader
from proxy.server.serve import StartupError, start, wait_for_signal
from proxy.simulator import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET

from .conftest import Gateway, GatewayFactory, proxy_config
from .test_errors import closed_port


@pytest.fixture
async def windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Windows lacks, taken away: SIGHUP, the loop's signal handlers, the platform name."""

    def no_signal_handlers(*_: object) -> None:
        raise NotImplementedError  # as asyncio's ProactorEventLoop and SelectorEventLoop do

    monkeypatch.delattr(signal, "SIGHUP")
    monkeypatch.setattr(asyncio.get_running_loop(), "add_signal_handler", no_signal_handlers)
    monkeypatch.setattr(sys, "platform", "win32")


def ctrl_c(signum: int = signal.SIGINT) -> None:
    """Press Ctrl-C (or deliver ``signum``), once the proxy's own handler is in place: the
    default one would end the test run."""
    handler = signal.getsignal(signum)
    assert "wait_for_signal" in getattr(handler, "__qualname__", ""), handler
    signal.raise_signal(signum)


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def ready(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(url + "/-/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.02)
    raise AssertionError(f"{url} never became ready")


def held_route(entered: asyncio.Event, release: asyncio.Event) -> Callable[[web.Application], None]:
    """A gateway route that answers only when the test says so: a request surely in flight."""

    async def held(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.json_response({"held": True})

    def prepare(app: web.Application) -> None:
        app.router.add_get("/test/held", held)

    return prepare


async def test_serve_on_windows_serves_and_drains_on_ctrl_c(
    windows: None,
    gateway_factory: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    entered, release = asyncio.Event(), asyncio.Event()
    gateway = await gateway_factory(prepare=held_route(entered, release))
    port = closed_port()
    config = load_config(
        None,
        {"DAP_CLIENT_ID": DEMO_CLIENT_ID, "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET},
        {"listen": f"127.0.0.1:{port}", "upstream": gateway.url},
    )
    before = signal.getsignal(signal.SIGINT)
    # With ``load``: the reloader starts too, and must do without SIGHUP.
    serving = asyncio.create_task(server.serve(config, load=lambda: config))
    url = f"http://127.0.0.1:{port}"
    await ready(url)
    async with aiohttp.ClientSession() as http:

        async def in_flight() -> tuple[int, object]:
            async with http.get(url + "/test/held") as resp:
                return resp.status, await resp.json()

        request = asyncio.create_task(in_flight())
        await entered.wait()
        ctrl_c()
        await until(lambda: "shutting down" in caplog.text, "shutting down")
        release.set()
        assert await request == (200, {"held": True})
    assert await serving == 0
    assert signal.getsignal(signal.SIGINT) is before  # handed back as it was
    assert "stopped" in caplog.text
    startup = next(r.getMessage() for r in caplog.records if "listening on" in r.getMessage())
    assert startup.startswith(f"instructure-auth-proxy {__version__} on asyncio ")
    assert "EventLoop" in startup  # on Windows the loop's class: Proactor or Selector


async def test_ctrl_break_stops_it_too(windows: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # SIGBREAK exists only on Windows; SIGUSR1 stands in for it, by the same path.
    monkeypatch.setattr(signals, "STOP_SIGNALS", (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1))
    before = signal.getsignal(signal.SIGUSR1)
    waiting = asyncio.create_task(wait_for_signal())
    await asyncio.sleep(0)  # it installs its handlers
    ctrl_c(signal.SIGUSR1)
    await asyncio.wait_for(waiting, 5)
    assert signal.getsignal(signal.SIGUSR1) is before


async def test_secrets_reload_from_watched_files_without_sighup(
    windows: None, gateway: Gateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    secret = tmp_path / "secret"
    secret.write_text(DEMO_CLIENT_SECRET)
    environ = {"DAP_CLIENT_ID": DEMO_CLIENT_ID, "DAP_CLIENT_SECRET_FILE": str(secret)}
    flags = {"listen": "127.0.0.1:0", "upstream": gateway.url}
    config = load_config(None, environ, flags)
    running = await start(config)
    try:
        await running.first_token()
        reloader = Reloader(
            running.runner.app, config, lambda: load_config(None, environ, flags), interval=0.01
        )
        watching = asyncio.create_task(reloader.run())
        await asyncio.sleep(0)
        secret.write_text("a-new-and-longer-secret")
        client = running.runner.app[TOKEN_CLIENTS]["default"]
        await until(
            lambda: client.credentials.client_secret == "a-new-and-longer-secret", "reloaded"
        )
        assert "new credentials" in caplog.text
        watching.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watching
    finally:
        await running.stop()


async def test_demo_on_windows_prints_powershell_lines_and_stops_on_ctrl_c(
    windows: None, capsys: pytest.CaptureFixture[str]
) -> None:
    running = asyncio.create_task(demo.demo("127.0.0.1:0", "127.0.0.1:0"))
    out = ""

    def printed() -> bool:
        nonlocal out
        out += capsys.readouterr().out
        return "Press Ctrl-C to stop." in out

    await until(printed, "the demo's instructions")
    ctrl_c()
    assert await running == 0
    assert "-> 200" in out  # its self-check went through the proxy
    assert "  curl.exe http://127.0.0.1:" in out  # not PowerShell's curl alias
    assert "$env:DAP_API_URL='http://127.0.0.1:" in out
    assert "$env:DAP_TRACKING='false'; dap --non-interactive snapshot" in out
    assert "\\\n" not in out  # no POSIX line continuations


async def test_simulate_on_windows_prints_a_powershell_command(
    windows: None, capsys: pytest.CaptureFixture[str]
) -> None:
    running = asyncio.create_task(demo.simulate("127.0.0.1:0", 3599, True))
    out = ""

    def printed() -> bool:
        nonlocal out
        out += capsys.readouterr().out
        return "Press Ctrl-C to stop." in out

    await until(printed, "the simulator's instructions")
    ctrl_c()
    assert await running == 0
    url = out.split("Gateway simulator on ", 1)[1].split()[0]
    assert (
        f"  $env:DAP_CLIENT_ID='{DEMO_CLIENT_ID}'; $env:DAP_CLIENT_SECRET='{DEMO_CLIENT_SECRET}'; "
        f"instructure-auth-proxy serve --upstream {url}\n"
    ) in out


def test_powershell_quotes_a_quote_by_doubling_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    assert demo.command_line({"A": "it's"}, "run") == "$env:A='it''s'; run"


async def test_token_on_windows(
    windows: None, gateway: Gateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await token_command.print_token(proxy_config(gateway.url)) == 0
    token = capsys.readouterr().out.strip()
    assert token.count(".") == 2  # a JWT, alone on stdout


async def test_unix_sockets_on_windows_are_a_config_error_naming_the_alternative(
    windows: None,
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(None, {"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET": "s"}, {"listen": "unix:/x"})
    assert (
        "listen: Unix sockets are not available on Windows (got 'unix:/x'); listen on a loopback "
        "HOST:PORT such as 127.0.0.1:8080 instead (from flag --listen)"
    ) in str(raised.value)


async def test_a_loop_without_unix_sockets_is_a_startup_error(
    gateway: Gateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_unix_sockets(*_: object, **__: object) -> Any:
        raise NotImplementedError  # as on Windows, whatever the configuration said

    monkeypatch.setattr(asyncio.get_running_loop(), "create_unix_server", no_unix_sockets)
    config = load_config(
        None,
        {"DAP_CLIENT_ID": DEMO_CLIENT_ID, "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET},
        {"listen": f"unix:{tmp_path}/proxy.sock", "upstream": gateway.url},
    )
    with pytest.raises(StartupError) as raised:
        await start(config)
    assert raised.value.exit_status == 4
    assert str(raised.value) == (
        f"cannot listen on unix:{tmp_path}/proxy.sock: this platform has no Unix sockets; "
        "listen on 127.0.0.1:PORT instead"
    )


@pytest.mark.parametrize("platform", ["linux", "win32"])
def test_secret_file_mode_warning_only_where_modes_mean_something(
    platform: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value")
    secret.chmod(0o644)  # readable by others: worth a warning on POSIX
    monkeypatch.setattr(sys, "platform", platform)
    config = load_config(None, {"DAP_CLIENT_ID": "id", "DAP_CLIENT_SECRET_FILE": str(secret)})
    warned = [w for w in config.warnings if "can be read by other users" in w]
    assert bool(warned) == (platform == "linux")
