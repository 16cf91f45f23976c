"""Reloading secrets without a restart: on SIGHUP, and when a watched file changes.

Per profile: when its credentials differ from those in use, its token client takes the new
ones and its token manager fetches a token with them in the background. Requests in flight
are untouched, and the held token keeps being used until the new one arrives (or for as
long as it is valid, if the gateway refuses the new credentials). Access keys and local
clients are replaced at once. Adding or removing a profile, or changing anything else,
needs a restart: the reload says so.

Files are watched by polling their metadata every few seconds: a Kubernetes Secret update
(an atomic symlink swap) and an editor's save both change it, and polling needs neither a
dependency nor platform-specific notification.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

from aiohttp import web

from .app import ACCESS, TOKEN_CLIENTS, TOKENS
from .config import Config
from .errors import ConfigError

__all__ = ["Reloader"]

log = logging.getLogger("proxy.reload")

WATCH_INTERVAL = 5.0


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


class Reloader:
    """``Reloader(app, config, load).reload()``; ``await reloader.watch()`` polls files."""

    def __init__(
        self,
        app: web.Application,
        config: Config,
        load: Callable[[], Config],
        *,
        interval: float = WATCH_INTERVAL,
    ) -> None:
        self._app = app
        self._config = config
        self._load = load
        self._interval = interval
        self._stamps = {path: _stamp(path) for path in config.watched_files}

    def reload(self) -> bool:
        """Re-read the configuration and apply new secrets; False if it is invalid."""
        try:
            new = self._load()
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc.message)
            return False
        old = self._config
        clients, managers = self._app[TOKEN_CLIENTS], self._app[TOKENS]
        for name in sorted(set(new.profiles) ^ set(old.profiles)):
            log.warning("profile %s was added or removed: restart the proxy to apply it", name)
        for name, profile in new.profiles.items():
            previous = old.profiles.get(name)
            if previous is None or profile.credentials is None:
                continue
            if profile.credentials != previous.credentials:
                clients[name].credentials = profile.credentials
                managers[name].credentials_changed()
                log.info("profile %s: new credentials; fetching a token with them", name)
        if new.access != old.access:
            self._app[ACCESS].update(new.access)
            log.info("access keys and local clients reloaded")
        self._config = new
        self._stamps = {path: _stamp(path) for path in new.watched_files}
        return True

    async def watch(self) -> None:
        """Poll the watched files; reload when one changes. Runs until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            changed = [p for p, stamp in self._stamps.items() if _stamp(p) != stamp]
            if changed:
                log.info("changed: %s; reloading", ", ".join(changed))
                if not self.reload():
                    # Not again for the same change: wait for the next one.
                    self._stamps = {path: _stamp(path) for path in self._stamps}

    async def run(self) -> None:
        """Watch files, and reload on SIGHUP, until cancelled."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.watch()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
