"""Reloading without a restart: on SIGHUP, and when a watched file changes.

What changes live: a profile's credentials (its token client takes the new ones and its token
manager fetches a token with them in the background; requests in flight are untouched, and
the held token stays in use until the new one arrives, or while it is valid if the gateway
refuses the new credentials), and access keys and local clients, at once. Anything else that
changed needs a restart: the reload names each such setting in a warning, and keeps comparing
against what actually runs, so the warning stays true until the restart.

Files are watched by polling their metadata every few seconds: a Kubernetes Secret update
(an atomic symlink swap) and an editor's save both change it, and polling needs neither a
dependency nor platform-specific notification. The watcher runs under the app's
``Supervisor`` (observe/background.py): an unexpected error does not end the watching.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config import Config, Profile
from ..errors import ConfigError
from ..observe.background import BackgroundProblem
from .keys import ACCESS, METRICS, SUPERVISOR, TOKEN_CLIENTS, TOKENS

__all__ = ["CONFIG_TASK", "ReloadFigures", "Reloader", "restart_needed"]

log = logging.getLogger("proxy.reload")

WATCH_INTERVAL = 5.0
_TASK = "reload"
CONFIG_TASK = "configuration"  # a failed reload's problem, until one succeeds
# Config fields that apply live, or are not settings at all.
_LIVE_OR_DERIVED = frozenset({"access", "default_profile", "profiles", "warnings", "watched_files"})


class ReloadFigures(Collector):
    """``proxy_config_reload_failures_total`` and ``proxy_config_last_reload_successful``,
    one pair an app (registered with its metrics once, whichever Reloader comes first)."""

    def __init__(self) -> None:
        self.failures = 0
        self.last_ok = True  # the configuration started with was valid

    @classmethod
    def of(cls, app: web.Application) -> ReloadFigures:
        figures = _FIGURES.get(app)
        if figures is None:
            figures = _FIGURES[app] = cls()
            app[METRICS].registry.register(figures)
        return figures

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "proxy_config_reload_failures",
            "Reloads refused as invalid (the running configuration kept).",
            value=self.failures,
        )
        yield GaugeMetricFamily(
            "proxy_config_last_reload_successful",
            "1 if the last reload applied (or none was tried), 0 if it was refused.",
            value=1 if self.last_ok else 0,
        )


_FIGURES: weakref.WeakKeyDictionary[web.Application, ReloadFigures] = weakref.WeakKeyDictionary()


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


def _differing(old: Any, new: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)]


def restart_needed(running: Config, new: Config) -> list[str]:
    """The settings that differ between ``running`` and ``new`` and cannot change live,
    named as in the configuration file."""
    changed: list[str] = []
    for name in _differing(running, new):
        if name == "timeouts":
            changed += [f"timeouts.{key}" for key in _differing(running.timeouts, new.timeouts)]
        elif name == "policy":
            changed += _differing(running.policy, new.policy)  # allowed_hosts, ...
        elif name not in _LIVE_OR_DERIVED:
            changed.append(name)
    for name in sorted(set(running.profiles) ^ set(new.profiles)):
        changed.append(f"profiles.{name} ({'added' if name in new.profiles else 'removed'})")
    if running.default_profile.url != new.default_profile.url:
        changed.append("upstream")
    for name in sorted(set(running.profiles) & set(new.profiles)):
        before, after = running.profiles[name], new.profiles[name]
        prefix = "" if name == "default" else f"profiles.{name}."
        for key, setting in (("url", "upstream"), ("token_url", "token_url")):
            if getattr(before, key) != getattr(after, key) and f"{prefix}{setting}" not in changed:
                changed.append(f"{prefix}{setting}")
        if before.local_client_ids != after.local_client_ids:
            changed.append(f"{prefix}local_client_ids")
    return changed


class Reloader:
    """``Reloader(app, config, load).reload()``; ``await reloader.run()`` watches files and
    SIGHUP until cancelled."""

    def __init__(
        self,
        app: web.Application,
        config: Config,
        load: Callable[[], Config],
        *,
        interval: float = WATCH_INTERVAL,
    ) -> None:
        self._app = app
        self._running = config  # what is applied: the comparisons are against this
        self._load = load
        self._interval = interval
        self._stamps = {path: _stamp(path) for path in config.watched_files}
        self._signalled_tasks: set[asyncio.Future[None]] = set()
        # Reloads read and apply one at a time, in order: two that overlapped could finish
        # out of order, the one that read the files first applying last (a key revoked by
        # the newer read restored by the older one, from a slow mount).
        self._in_order = asyncio.Lock()
        self._figures = ReloadFigures.of(app)

    def reload(self) -> bool:
        """Re-read the configuration and apply what can change live; False if it is invalid.
        (Reads files on the calling thread: the watcher and SIGHUP use ``reload_off_loop``.)"""
        try:
            new = self._load()
        except ConfigError as exc:
            return self._failed(exc)
        return self._apply(new)

    async def reload_off_loop(self) -> bool:
        """``reload``, the files read in a worker thread: a slow disk or network mount never
        holds up requests (a FIFO in a file's place is refused without waiting: files.py)."""
        async with self._in_order:
            try:
                new = await asyncio.to_thread(self._load)
            except ConfigError as exc:
                return self._failed(exc)
            return self._apply(new)

    def _failed(self, exc: ConfigError) -> bool:
        """The running configuration stays; the failure shows in /-/status's ``problems``
        and the metrics until a reload succeeds."""
        log.error("reload failed, keeping the running configuration: %s", exc.message)
        # Only the keys in /-/status, the full words (sources, paths) in the log.
        keys = sorted({problem.partition(":")[0] for problem in exc.problems})
        supervisor = self._app[SUPERVISOR]
        supervisor.problems[CONFIG_TASK] = BackgroundProblem(
            CONFIG_TASK,
            f"the last reload failed, the running configuration is kept: invalid "
            f"{', '.join(keys)} (the log says why)",
            time.time(),
        )
        self._figures.failures += 1
        self._figures.last_ok = False
        return False

    def _apply(self, new: Config) -> bool:
        for warning in new.warnings:  # as at startup: a secret file others can read, ...
            log.warning("%s", warning)
        if self._app[SUPERVISOR].problems.pop(CONFIG_TASK, None) is not None:
            log.info("reload succeeded: the configuration problem is gone")
        self._figures.last_ok = True
        running = self._running
        clients, managers = self._app[TOKEN_CLIENTS], self._app[TOKENS]
        applied: dict[str, Profile] = dict(running.profiles)
        for name, profile in running.profiles.items():
            fresh = new.profiles.get(name)
            if fresh and fresh.credentials and fresh.credentials != profile.credentials:
                clients[name].credentials = fresh.credentials
                managers[name].credentials_changed()
                applied[name] = dataclasses.replace(profile, credentials=fresh.credentials)
                log.info("profile %s: new credentials; fetching a token with them", name)
        if new.access != running.access or applied != running.profiles:
            # New keys, clients, or local token signing keys (derived from the credentials).
            self._app[ACCESS].update(new.access, applied)
            log.info("access keys, local clients and local token keys reloaded")
        if pending := restart_needed(running, new):
            log.warning("changed settings need a restart to apply: %s", ", ".join(pending))
        self._running = dataclasses.replace(
            running,
            access=new.access,
            profiles=applied,
            default_profile=applied.get("default", running.default_profile),
            watched_files=new.watched_files,
        )
        self._stamps = {path: _stamp(path) for path in new.watched_files}
        return True

    def _reload_on_signal(self) -> None:
        # Off the signal handler: the reading happens in a thread, awaited by a task.
        if len(self._signalled_tasks) >= 2:  # one reading, one to read after it: enough
            return
        task = asyncio.ensure_future(self._signalled())
        self._signalled_tasks.add(task)
        task.add_done_callback(self._signalled_tasks.discard)

    async def _signalled(self) -> None:
        # A task's exception would only reach asyncio's default handler.
        try:
            await self.reload_off_loop()
        except Exception as exc:
            self._app[SUPERVISOR].record(_TASK, exc)
        else:
            self._app[SUPERVISOR].clear(_TASK)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            if changed := [p for p, stamp in self._stamps.items() if _stamp(p) != stamp]:
                log.info("changed: %s; reloading", ", ".join(changed))
                # Not again for the same change, whatever the outcome: wait for the next.
                self._stamps = {path: _stamp(path) for path in self._stamps}
                await self.reload_off_loop()
            self._app[SUPERVISOR].clear(_TASK)  # a poll that went through: no problem now

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        hangup = getattr(signal, "SIGHUP", None)  # not on Windows
        if hangup is not None:
            try:
                loop.add_signal_handler(hangup, self._reload_on_signal)
            except (NotImplementedError, RuntimeError):
                hangup = None  # an event loop without signal handlers
        try:
            await self._app[SUPERVISOR].run(_TASK, self.watch)
        finally:
            if hangup is not None:
                loop.remove_signal_handler(hangup)
