"""``/-/status``: what the proxy is doing, as JSON for people and dashboards. Never a token.
(``/-/ready``, the orchestrator's signal, is answered here too.)

``rate_limits``: each endpoint class's remaining budget, requests that could go at once
(absent when shaping is off). ``problems``: background tasks failing unexpectedly now, token
refreshes included (observe/background.py), latest first. ``scope``: from the gateway
token's informational scope string, ``"<service> principal:<id> partner:<id> region:<id>"``.
``shared_state``: the Redis replicas share (URL masked), whether it answers, since when; while
it does not, a ``shared_state`` problem says why (rate budgets are then this replica's own).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .. import __version__
from ..admission.routing import unknown_profile
from ..observe.background import BackgroundProblem
from ..observe.logs import REQUEST_ID
from ..responses import REQUEST_ID_HEADER, error_response, json_response
from ..sharing.shared_state import TASK, SharedState
from ..tokens.manager import TokenManager
from ..upstream.egress import masked
from ..upstream.shaping import Shaper
from .keys import ACCESS, CONFIG, GUARD, METRICS, RELAY, SHARING, STARTED, SUPERVISOR, TOKENS

__all__ = ["parse_scope", "ready", "status"]


def parse_scope(scope: str) -> dict[str, str]:
    """``{"service", "principal", "partner", "region"}``, those present in ``scope``."""
    parsed: dict[str, str] = {}
    for word in scope.split():
        name, sep, value = word.partition(":")
        if sep and name in ("principal", "partner", "region"):
            parsed[name] = value
        elif "service" not in parsed:  # the first other word, colons and all (urn:...)
            parsed["service"] = word
    return parsed


def _utc(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _profile(tokens: TokenManager, upstream: str | None, shaper: Shaper | None) -> dict[str, Any]:
    token = tokens.state.token
    expires_in = tokens.expires_in()
    last: dict[str, Any] | None = None
    if tokens.last_refresh is not None:
        at, outcome, error = tokens.last_refresh
        last = {"at": _utc(at), "outcome": outcome, "error": error.text if error else None}
    return {
        "upstream": upstream,
        "ready": tokens.ready,
        "state": tokens.state.phase.value,  # the token lifecycle's phase (tokens/refresher.py)
        "expires_in": round(expires_in, 1) if expires_in is not None else None,
        "scope": parse_scope(token.scope) if token is not None else {},
        "last_refresh": last,
        "refreshes": dict(tokens.refreshes),
        "relayed_401s": tokens.relayed_401s,
        **({"rate_limits": shaper.remaining(tokens.name)} if shaper is not None else {}),
    }


def _problems(app: web.Application) -> list[BackgroundProblem]:
    """The background problems, and the shared state's when Redis does not answer."""
    problems = list(app[SUPERVISOR].problems.values())
    shared = app[SHARING].shared_state
    if shared is not None and not shared.up and TASK not in app[SUPERVISOR].problems:
        problems.append(BackgroundProblem(TASK, shared.problem or "unreachable", shared.since))
    return problems


def _shared_state(shared: SharedState | None) -> dict[str, Any] | None:
    if shared is None:
        return None
    return {
        "url": shared.shown,
        "up": shared.up,
        "since": _utc(shared.since),
        "errors": shared.errors,
    }


async def ready(request: web.Request) -> web.Response:
    """Ready while any profile can serve: one institution's failure is not everyone's. Why
    not is told in the proxy's own words to everyone; the token endpoint's own words
    (redacted) only to callers the proxy knows, when inbound authentication is on."""
    app = request.app
    managers = app[TOKENS]
    name = request.match_info.get("profile")
    request_id = request.get(REQUEST_ID)  # the caller's X-Request-Id, or the guard's own
    if name is not None:
        if name not in managers:
            # The profiles configured only to callers the proxy knows: /-/ready is public.
            known = not app[ACCESS].required or app[GUARD].identify(request) is not None
            message = unknown_profile(name, managers if known else None)
            return error_response(404, "UnknownProfile", message, request_id=request_id)
        managers = {name: managers[name]}
    problems = [f"{problem.task}: {problem.error}" for problem in _problems(app)]
    states = {profile: tokens.ready for profile, tokens in managers.items()}
    if any(states.values()):
        body: dict[str, object] = {"status": "ready", "profiles": states}
        if problems:
            body["problems"] = problems
        answer = json_response(body)
        answer.headers[REQUEST_ID_HEADER] = request_id or ""
        return answer
    trusted = not app[ACCESS].required or app[GUARD].identify(request) is not None
    reasons = []
    for profile, tokens in managers.items():
        error = tokens.state.error
        why = "no token yet" if error is None else error.text if trusted else error.message
        reasons.append(f"{profile}: {why}")
    return error_response(503, "NotReady", "; ".join([*reasons, *problems]), request_id=request_id)


async def status(request: web.Request) -> web.Response:
    app = request.app
    config, profiles, shaper = app[CONFIG], app[TOKENS], app[SHARING].shaper
    problems = sorted(_problems(app), key=lambda p: p.at, reverse=True)
    upstreams = {name: str(p.url) for name, p in config.profiles.items()}
    egress = config.egress
    return json_response(
        {
            "version": __version__,
            "upstream": str(config.default_profile.url),
            "uptime_seconds": round(time.monotonic() - app[STARTED], 1),
            "requests_served": app[METRICS].requests_served,
            "ready": any(tokens.ready for tokens in profiles.values()),
            "profiles": {
                name: _profile(tokens, upstreams.get(name), shaper)
                for name, tokens in profiles.items()
            },
            "problems": [{"task": p.task, "error": p.error, "at": _utc(p.at)} for p in problems],
            # How connections leave the proxy (egress.py), for whoever debugs a network: masked.
            "egress": {
                name: masked(url) if url is not None else None
                for name, url in (
                    ("egress_proxy", egress.proxy),
                    ("https_proxy", egress.https_proxy),
                    ("http_proxy", egress.http_proxy),
                )
            }
            | {"no_proxy": list(egress.no_proxy)},
            "object_relay": RELAY in app,
            "shared_state": _shared_state(app[SHARING].shared_state),
        }
    )
