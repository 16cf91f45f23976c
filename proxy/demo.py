"""Offline runs: the gateway simulator alone (``simulate``), or with the proxy (``demo``).

The demo needs no credentials: the proxy is given the simulator's published demo client,
checks itself with one request, and prints what to try with curl and with the ``dap`` CLI.
"""

from __future__ import annotations

import dataclasses
import logging
import sys

import aiohttp
from aiohttp import web

from . import exit_status
from .config import Credentials, load_config, parse_listen
from .errors import ConfigError
from .server import StartupError, start, wait_for_signal
from .simulator import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, SimulatorSettings, create_simulator_app

__all__ = ["demo", "simulate"]

log = logging.getLogger("proxy.demo")


async def _start_simulator(listen: str, settings: SimulatorSettings) -> tuple[web.AppRunner, str]:
    try:
        address = parse_listen(listen)
    except ValueError as exc:
        raise ConfigError([f"--listen: {exc}"]) from None
    # The proxy logs each request already; the simulator stays quiet.
    runner = web.AppRunner(
        create_simulator_app(settings), handler_cancellation=True, access_log=None
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, address.host, address.port).start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(
            f"cannot listen on {address}: {exc.strerror or exc}", exit_status.CANNOT_LISTEN
        ) from None
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"


def _say(text: str) -> None:
    print(text, flush=True)  # the demo talks to a person on stdout


async def simulate(listen: str, token_lifetime: int, rate_limits: bool) -> int:
    """Run the simulator until SIGTERM or SIGINT."""
    settings = SimulatorSettings(token_lifetime=token_lifetime, rate_limits=rate_limits)
    try:
        runner, url = await _start_simulator(listen, settings)
    except ConfigError as exc:
        print(f"instructure-auth-proxy: {exc}", file=sys.stderr)
        return exit_status.CONFIG
    except StartupError as exc:
        print(f"instructure-auth-proxy: {exc}", file=sys.stderr)
        return exc.exit_status
    _say(
        f"Gateway simulator on {url}\n"
        f"  demo client id: {DEMO_CLIENT_ID}\n"
        f"  demo secret:    {DEMO_CLIENT_SECRET}\n"
        f"Point the proxy at it: instructure-auth-proxy serve --upstream {url}\n"
        "Press Ctrl-C to stop."
    )
    await wait_for_signal()
    await runner.cleanup()
    return 0


async def demo(listen: str, simulator_listen: str) -> int:
    """Start the simulator and the proxy in front of it; serve until SIGTERM or SIGINT."""
    try:
        simulator, simulator_url = await _start_simulator(simulator_listen, SimulatorSettings())
        config = load_config(
            None, {}, {"listen": listen, "upstream": simulator_url}, require_credentials=False
        )
    except (ConfigError, StartupError) as exc:
        print(f"instructure-auth-proxy: {exc}", file=sys.stderr)
        return exc.exit_status if isinstance(exc, StartupError) else exit_status.CONFIG
    credentials = Credentials(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)
    default = dataclasses.replace(config.upstream, credentials=credentials)
    config = dataclasses.replace(config, upstream=default, profiles={"default": default})
    try:
        proxy = await start(config)
        await proxy.first_token()
    except StartupError as exc:
        await simulator.cleanup()
        hint = " (another process uses it? try --listen 127.0.0.1:8081)"
        print(f"instructure-auth-proxy: {exc}{hint}", file=sys.stderr)
        return exc.exit_status

    url = proxy.url
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + "/dap/query/canvas/table") as response,
    ):
        check = f"{response.status} {await response.text()}"
    _say(
        f"""
instructure-auth-proxy demo
  proxy:     {url}  (holds the credentials, refreshes the token)
  gateway:   {simulator_url}  (a local simulator of Instructure's gateway)
  self-check: GET {url}/dap/query/canvas/table -> {check}

Try it, with no token handling at all:
  curl {url}/dap/query/canvas/table
  curl {url}/dap/query/canvas/table/accounts/schema

With the official dap CLI (pip install instructure-dap-client), any credentials will do:
  DAP_API_URL={url} DAP_CLIENT_ID=any DAP_CLIENT_SECRET=any DAP_TRACKING=false \\
    dap --non-interactive snapshot --namespace canvas --table accounts --format jsonl \\
    --output-directory ./dap-demo

Press Ctrl-C to stop.
"""
    )
    await wait_for_signal()
    await proxy.stop()
    await simulator.cleanup()
    return 0
