"""Running the proxy: listen, fetch the first token, serve until a signal (signals.py),
drain, exit with a status (exit_status.py)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from aiohttp import web

from .. import __version__, exit_status
from ..config import Config, ListenAddress
from ..errors import CredentialsRejected, TokenEndpointUnavailable
from ..observe.logs import AccessLog, AccessLogger, BufferedAccessLog
from .aiohttp_support import UnsupportedAiohttp
from .app import create_app
from .drain import stop
from .fairness import RateFloor
from .keys import ACCESS_LOG, CONFIG, METRICS, STOPPING, SUPERVISOR, TOKENS
from .protocol import ProxyRunner
from .reload import Reloader
from .signals import wait_for_signal

__all__ = ["RunningProxy", "StartupError", "listen_failure", "serve", "start", "wait_for_signal"]

log = logging.getLogger("proxy.server")

LISTEN_BACKLOG = 1024

# Allocations between two collections of CPython's young generation (its default is 700). A
# small request allocates a few hundred objects that are gone when it ends; with many in
# flight, the default collects every few requests, and what those still in flight hold is
# promoted for the older collections to walk again. 10,000 (some thirty requests) costs
# 8 % less CPU per request at 50 connections, no change at one (BENCHMARKS.md), and lets at
# most that many objects of cyclic garbage wait a little longer.
YOUNG_GENERATION = 10_000


class StartupError(Exception):
    """The proxy could not start; ``exit_status`` says why."""

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@dataclass
class RunningProxy:
    """A listening proxy: its base URL; ``await running.stop()`` drains and closes it."""

    url: str
    runner: web.AppRunner
    socket_file: tuple[str, int, int] | None = None  # a Unix socket's path, device, inode

    async def first_token(self) -> None:
        """Wait for every profile's first token. Raises ``StartupError`` only when every
        profile's credentials are rejected: one institution's failure is not everyone's."""
        managers = self.runner.app[TOKENS]
        outcomes = await asyncio.gather(
            *(tokens.first_token() for tokens in managers.values()), return_exceptions=True
        )
        rejected = [o for o in outcomes if isinstance(o, CredentialsRejected)]
        for name, outcome in zip(managers, outcomes, strict=True):
            label = "" if name == "default" else f" (profile {name})"
            if isinstance(outcome, CredentialsRejected):
                if len(managers) > 1:
                    log.error("%s%s; serving the other profiles", outcome.text, label)
            elif isinstance(outcome, TokenEndpointUnavailable):
                log.warning(
                    "no token yet%s: %s; serving anyway, not ready, retrying", label, outcome.text
                )
            elif isinstance(outcome, BaseException):
                raise outcome
        if len(rejected) == len(managers):
            raise StartupError(rejected[0].text, exit_status.CREDENTIALS_REJECTED)

    async def stop(self, delay: float = 0.0) -> None:
        """Not ready at once, serving ``delay`` seconds more, then drain (drain.py)."""
        app = self.runner.app
        try:
            await stop(self.runner, app[STOPPING], delay, app[CONFIG].timeouts.shutdown)
        finally:
            app[ACCESS_LOG].flush()
            self._remove_socket_file()

    def _remove_socket_file(self) -> None:
        """The Unix socket this process made, and nothing else: a file put in its place
        since (another process listening there now) is left alone."""
        if self.socket_file is None:
            return
        path, device, inode = self.socket_file
        with contextlib.suppress(OSError):  # gone already (Python 3.13 removes it itself)
            found = os.stat(path)
            if (found.st_dev, found.st_ino) == (device, inode):
                os.unlink(path)


async def start(config: Config, access_log: AccessLog | None = None) -> RunningProxy:
    """Start fetching the first token and listen at once (requests that arrive before the
    first token wait for that one fetch). Raises ``StartupError``."""
    for warning in config.warnings:
        log.warning("%s", warning)
    app = create_app(config, access_log=access_log)
    try:
        runner = ProxyRunner(
            app,
            handler_cancellation=True,  # a client hanging up cancels its upstream request
            access_log_class=AccessLogger.bound(app[METRICS], app[ACCESS_LOG]),
            access_log=logging.getLogger("proxy.access"),
            shutdown_timeout=config.timeouts.shutdown,  # see protocol.py: the drain
            max_connections=config.max_connections,
            per_address=config.connections_per_address,
            rate_floor=(
                RateFloor(config.min_request_rate, config.min_request_rate_window)
                if config.min_request_rate > 0
                else None
            ),
            stopping=app[STOPPING],  # /-/ready reads it too
            head_timeout=config.timeouts.client,
            # Idle kept-alive client connections are closed after this long (aiohttp's
            # default is 75 s, fixed; an hour in some releases), so they do not hold slots.
            keepalive_timeout=config.timeouts.idle,
        )
    except UnsupportedAiohttp as exc:  # names the version, what is missing and the range
        raise StartupError(str(exc), exit_status.FAILED) from None
    await runner.setup()
    try:
        url, socket_file = await _listen(runner, config.listen)
    except (OSError, NotImplementedError) as exc:
        await runner.cleanup()
        raise StartupError(
            f"cannot listen on {config.listen}: {listen_failure(exc)}", exit_status.CANNOT_LISTEN
        ) from None
    if not config.listen.is_loopback:
        log.warning("LISTENING ON %s, WHICH IS NOT LOOPBACK: %s", config.listen, _exposure(config))
    software = _running_on()
    for name, profile in config.profiles.items():
        prefix = "" if name == "default" else f"/{name}/..."
        message = "%s: listening on %s%s, forwarding to %s (profile %s)"
        log.info(message, software, url, prefix, profile.url, name)
    return RunningProxy(url, runner, socket_file)


def _exposure(config: Config) -> str:
    """What protects a proxy others can reach, and what does not, in one sentence."""
    if config.access.required:
        hosts = "Host must be in allowed_hosts"
        if config.policy.allowed_hosts is None:
            hosts = "any Host is admitted (a web page cannot present a key)"
        return (
            "protected: only callers with an access key or local credentials are served, "
            f"failed logins are throttled, {hosts}; not protected: the traffic itself, which "
            "is plain HTTP (keep it on a private network or behind TLS)"
        )
    return (
        "NOT protected: anyone who can reach this port uses the gateway with this proxy's "
        "credentials; only the Host check (allowed_hosts) and the refusal of cross-site "
        "browser requests apply. Keep the port private, or require access_keys"
    )


def _running_on() -> str:
    """``instructure-auth-proxy 0.1.0 on uvloop 0.21.0``: what a bug report needs first (uvloop
    is markedly faster; on Windows the loop class decides what works: signals, subprocesses)."""
    loop = type(asyncio.get_running_loop())
    name = loop.__module__.partition(".")[0]
    if name == "uvloop":
        version = getattr(sys.modules.get("uvloop"), "__version__", "")
        name = f"uvloop {version}".rstrip()
    elif sys.platform == "win32":
        name = f"{name} {loop.__name__}"  # ProactorEventLoop or SelectorEventLoop
    return f"instructure-auth-proxy {__version__} on {name}"


# The OS's reasons, in the words of its own messages. Windows reports socket errors by their
# WSA numbers, which errno names only partly (EACCES is 13 there, WSAEACCES 10013).
_BIND_REASONS = {
    getattr(errno, name): reason
    for names, reason in (
        (("EADDRINUSE", "WSAEADDRINUSE"), "address already in use"),
        (("EACCES", "WSAEACCES"), "permission denied"),
        (("EADDRNOTAVAIL", "WSAEADDRNOTAVAIL"), "no such address on this machine"),
    )
    for name in names
    if hasattr(errno, name)
}


def listen_failure(exc: BaseException) -> str:
    """Why a listen failed, in a few words: ``address already in use``. (asyncio's own text
    repeats the address and, on Windows, is a sentence long.)"""
    if isinstance(exc, NotImplementedError):
        return "this platform has no Unix sockets; listen on 127.0.0.1:PORT instead"
    if isinstance(exc, socket.gaierror):
        return "name not resolved"
    if isinstance(exc, OSError):
        if exc.errno in _BIND_REASONS:
            return _BIND_REASONS[exc.errno]
        if exc.strerror:
            # "error while attempting to bind on address ('::1', 80): <the OS's reason>"
            return exc.strerror.rpartition("): ")[2].lower()
    return type(exc).__name__


async def _listen(
    runner: web.AppRunner, listen: ListenAddress
) -> tuple[str, tuple[str, int, int] | None]:
    """Bind the site; returns the proxy's base URL (``unix:/path`` for a socket) and the
    socket file made (its path, device and inode, to remove it at the end), if any."""
    if listen.path is not None:
        # Owner-only from the moment it exists: no window in which others may connect.
        previous = os.umask(0o177)
        try:
            await web.UnixSite(runner, listen.path, backlog=LISTEN_BACKLOG).start()
        finally:
            os.umask(previous)
        os.chmod(listen.path, 0o600)
        made = os.stat(listen.path)
        return f"unix:{listen.path}", (listen.path, made.st_dev, made.st_ino)
    # A deeper accept queue than aiohttp's 128: a burst of connections (a thousand jobs
    # polled at once) otherwise has SYNs dropped and retried a second later.
    await web.TCPSite(runner, listen.host, listen.port, backlog=LISTEN_BACKLOG).start()
    port = runner.addresses[0][1] if runner.addresses else listen.port
    return f"http://{ListenAddress(listen.host, port)}", None  # [IPv6]:port


async def serve(config: Config, load: Callable[[], Config] | None = None) -> int:
    """Run until SIGTERM or SIGINT; requests in flight get ``timeouts.shutdown`` to finish.
    With ``load`` (how the configuration was read), secrets are reloaded on SIGHUP and when
    a secret file changes."""
    with collector_for_serving():
        return await _serve(config, load)


@contextlib.contextmanager
def collector_for_serving() -> Iterator[None]:
    """CPython's collector set for a long-running server (``YOUNG_GENERATION``); the older
    generations keep the interpreter's own settings. As it was again on the way out."""
    before = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


async def _serve(config: Config, load: Callable[[], Config] | None) -> int:
    # The command line's access lines go straight to stderr in batches (logs.py says why).
    access_log = BufferedAccessLog(sys.stderr, config.log_level, config.log_format)
    try:
        running = await start(config, access_log)
    except StartupError as exc:
        log.error("%s", exc)
        return exc.exit_status
    watcher = None
    if load is not None:
        # At once, before the first token: a SIGHUP must never find the default handler,
        # which would end the process. (The reloader supervises itself: background.py.)
        watcher = asyncio.create_task(Reloader(running.runner.app, config, load).run())
        await asyncio.sleep(0)  # let it install its SIGHUP handler
    delay = 0.0
    try:
        await running.first_token()
    except StartupError as exc:
        log.error("%s", exc)
        failed: int | None = exc.exit_status
    else:
        failed = None
        # Ctrl-C is someone at a terminal, who wants it stopped now.
        if await wait_for_signal() != signal.SIGINT:
            delay = config.shutdown_delay
    if watcher is not None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if failed is not None:
        await running.stop()
        return failed
    try:
        await running.stop(delay)
    except Exception as exc:
        # The drain met something unforeseen: say so once, and exit all the same.
        running.runner.app[SUPERVISOR].record("shutdown", exc)
        return exit_status.FAILED
    log.info("stopped")
    return exit_status.OK
