"""Offline runs: the gateway simulator alone (``simulate``), or with the proxy (``demo``), which
needs no credentials: the proxy is given the simulator's published demo client, checks itself
with one request, and prints what to try with curl and with the ``dap`` CLI.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shlex
import sys

import aiohttp
from aiohttp import web

from .. import exit_status
from ..config import Credentials, ListenAddress, load_config, parse_listen
from ..errors import ConfigError
from ..server.serve import StartupError, listen_failure, start, wait_for_signal
from ..simulator import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, SimulatorSettings, create_simulator_app

__all__ = ["demo", "simulate"]

log = logging.getLogger("proxy.demo")


async def _start_simulator(listen: str, settings: SimulatorSettings) -> tuple[web.AppRunner, str]:
    try:
        address = parse_listen(listen)
    except ValueError as exc:
        raise ConfigError([f"--listen: {exc}"]) from None
    if address.path is not None:
        raise ConfigError([f"--listen: the simulator listens on HOST:PORT only, got {listen!r}"])
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
            f"cannot listen on {address}: {listen_failure(exc)}", exit_status.CANNOT_LISTEN
        ) from None
    return runner, f"http://{ListenAddress(*runner.addresses[0][:2])}"  # [IPv6]:port


def _say(text: str) -> None:
    print(text, flush=True)  # the demo talks to a person on stdout


def _failed(exc: ConfigError | StartupError, hint: str = "") -> int:
    print(f"instructure-auth-proxy: {exc}{hint}", file=sys.stderr)
    return exc.exit_status if isinstance(exc, StartupError) else exit_status.CONFIG


def _arg(word: str) -> str:
    """A word of a command line, quoted for the user's shell if it needs it."""
    return word if sys.platform == "win32" else shlex.quote(word)


def command_line(environment: dict[str, str], *lines: str) -> str:
    """A command (its ``lines``) with ``environment`` set, written to run as printed in
    the user's shell: PowerShell on Windows (its default shell; ``VAR=value command`` means
    nothing there), a POSIX shell elsewhere (macOS, Linux)."""
    if sys.platform == "win32":
        # Single quotes are literal in PowerShell; a quote inside one is doubled.
        sets = [
            f"$env:{name}='{value.replace(chr(39), chr(39) * 2)}'"
            for name, value in environment.items()
        ]
        return "; ".join([*sets, " ".join(lines)])
    prefix = " ".join(f"{name}={shlex.quote(value)}" for name, value in environment.items())
    return f"{prefix} {lines[0]}" if len(lines) == 1 else " \\\n    ".join([prefix, *lines])


def _curl() -> str:
    # Windows PowerShell 5.1 has "curl" as an alias of Invoke-WebRequest; curl.exe is curl.
    return "curl.exe" if sys.platform == "win32" else "curl"


async def _stop_signal() -> asyncio.Task[int]:
    """Ctrl-C and SIGTERM caught from now on: before "Press Ctrl-C to stop" is printed."""
    stop = asyncio.create_task(wait_for_signal())
    await asyncio.sleep(0)  # it installs its handlers, then waits
    return stop


async def simulate(listen: str, token_lifetime: int, rate_limits: bool) -> int:
    """Run the simulator until SIGTERM or SIGINT."""
    settings = SimulatorSettings(token_lifetime=token_lifetime, rate_limits=rate_limits)
    try:
        runner, url = await _start_simulator(listen, settings)
    except (ConfigError, StartupError) as exc:
        return _failed(exc)
    # Runs as printed: with the demo credentials, which the proxy needs to start.
    serve = command_line(
        {"DAP_CLIENT_ID": DEMO_CLIENT_ID, "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET},
        f"instructure-auth-proxy serve --upstream {_arg(url)}",
    )
    stop = await _stop_signal()
    _say(
        f"Gateway simulator on {url}\n"
        f"  demo client id: {DEMO_CLIENT_ID}\n"
        f"  demo secret:    {DEMO_CLIENT_SECRET}\n"
        f"Point the proxy at it:\n  {serve}\n"
        "Press Ctrl-C to stop."
    )
    await stop
    log.info("stopping the simulator")
    await runner.cleanup()
    log.info("stopped")
    return 0


async def demo(listen: str, simulator_listen: str) -> int:
    """Start the simulator and the proxy in front of it; serve until SIGTERM or SIGINT."""
    try:
        config = load_config(None, {}, {"listen": listen}, require_credentials=False)
        if config.listen.path is not None:
            raise ConfigError([f"--listen: the demo listens on HOST:PORT only, got {listen!r}"])
        simulator, simulator_url = await _start_simulator(simulator_listen, SimulatorSettings())
    except (ConfigError, StartupError) as exc:
        return _failed(exc)
    config = load_config(
        None, {}, {"listen": listen, "upstream": simulator_url}, require_credentials=False
    )
    credentials = Credentials(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET)
    default = dataclasses.replace(config.default_profile, credentials=credentials)
    config = dataclasses.replace(config, default_profile=default, profiles={"default": default})
    try:
        proxy = await start(config)
    except StartupError as exc:
        await simulator.cleanup()
        port = config.listen.port
        return _failed(exc, f" (another process uses it? try --port {port + 1})" if port else "")
    try:
        await proxy.first_token()
    except StartupError as exc:  # not with the simulator's own demo client, but say so
        await proxy.stop()
        await simulator.cleanup()
        return _failed(exc)

    url = proxy.url
    anything = {"DAP_CLIENT_ID": "any", "DAP_CLIENT_SECRET": "any", "DAP_TRACKING": "false"}
    dap = command_line(
        {"DAP_API_URL": url} | anything,
        "dap --non-interactive snapshot --namespace canvas --table accounts --format jsonl",
        "--output-directory ./dap-demo",
    )
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + "/dap/query/canvas/table") as response,
    ):
        check = f"{response.status} {await response.text()}"
    stop = await _stop_signal()
    _say(
        f"""
instructure-auth-proxy demo
  proxy:     {url}  (holds the credentials, refreshes the token)
  gateway:   {simulator_url}  (a local simulator of Instructure's gateway)
  self-check: GET {url}/dap/query/canvas/table -> {check}

Try it, with no token handling at all:
  {_curl()} {_arg(url + "/dap/query/canvas/table")}
  {_curl()} {_arg(url + "/dap/query/canvas/table/accounts/schema")}

With the official dap CLI (pip install instructure-dap-client), any credentials will do:
  {dap}

Press Ctrl-C to stop.
"""
    )
    await stop
    # As serve says it: a Ctrl-C that prints nothing looks like a hang.
    log.info(
        "shutting down: no new connections; up to %g s for requests in flight",
        config.timeouts.shutdown,
    )
    await proxy.stop()
    await simulator.cleanup()
    log.info("stopped")
    return 0
