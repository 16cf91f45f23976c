"""``create_app(config)``: the proxy as an aiohttp application.

Requests:

    /-/healthy              the process is alive (200)
    /-/ready                200 while at least one profile holds a valid token, else 503;
                            503 from the stop signal on (drain.py)
    /-/ready/<profile>      the same, for one profile
    /-/status               JSON: version, upstream, uptime, token state (status.py)
    /-/metrics              Prometheus text format (observe/metrics.py)
    /-/relay/<id>           with object_relay: an object from storage (sharing/relay.py)
    /-/...                  reserved for the proxy: anything else here is 404, never forwarded
    everything else         read once (routing.py), admitted (guard.py), then
      POST [/<p>]/ids/auth/login   the local token endpoint (login.py)
      anything else                forwarded to its profile's gateway (forward.py), within
                                   the rate limits, or answered from the cache (sharing/)

The ``/-/`` endpoints pass the Host and browser checks too; with inbound authentication,
status and metrics need a key, and readiness shows gateway-provided text only to callers
with one.

Each profile (credential set) has its own token manager and forwarder; they share one
upstream ``ClientSession`` (a keep-alive pool per host). All live for the life of the app,
opened and closed in ``cleanup_ctx``, reached through typed ``AppKey``s (keys.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from .. import paths
from ..admission.access import ANYONE, AccessControl
from ..admission.guard import CALLER, Guard, cors_headers
from ..admission.local_tokens import LocalTokenIssuer
from ..admission.login import LoginHandler
from ..admission.routing import ProfileRouter
from ..config import Config
from ..observe.background import Supervisor
from ..observe.logs import REQUEST_ID, AccessLog
from ..observe.metrics import CONTENT_TYPE, Metrics
from ..responses import error_response, json_response
from ..sharing.dispatch import Sharing
from ..sharing.relay import ObjectRelay
from ..tokens.manager import TokenManager
from ..tokens.token import Clock
from ..upstream.egress import direct_note, masked, proxy_for
from ..upstream.forward import Forwarder
from ..upstream.session import upstream_session
from ..upstream.token_client import TokenClient
from .drain import Stopping
from .keys import (
    ACCESS,
    ACCESS_LOG,
    CONFIG,
    FORWARDERS,
    GUARD,
    LOCAL_TOKENS,
    LOGIN,
    METRICS,
    RELAY,
    ROUTER,
    SHARING,
    STARTED,
    STOPPING,
    SUPERVISOR,
    TOKEN_CLIENTS,
    TOKENS,
)
from .status import ready, status

__all__ = ["create_app"]

log = logging.getLogger("proxy.app")


def create_app(
    config: Config, *, clock: Clock | None = None, access_log: AccessLog | None = None
) -> web.Application:
    """The proxy application; ``config.profiles`` must hold at least one credential set.

    ``access_log``: where access lines go (default: the ``proxy.access`` logger).
    """
    if not config.profiles:
        raise ValueError("create_app needs credentials; load_config reports them missing")
    issuer = LocalTokenIssuer()
    access = AccessControl(config.access, issuer, config.profiles)  # signs with their keys
    router = ProfileRouter(config.profiles)
    app = web.Application(
        # Replayable bodies are read whole, so the server must accept that much.
        client_max_size=max(config.replay_body_limit, 1024 * 1024) + 1,
    )
    app[CONFIG] = config
    app[LOCAL_TOKENS] = issuer
    app[ACCESS] = access
    app[ROUTER] = router
    app[GUARD] = Guard(config.policy, access)
    managers: dict[str, TokenManager] = {}
    app[TOKENS] = managers  # filled at startup, one per profile
    app[METRICS] = Metrics(lambda: managers)
    app[STARTED] = time.monotonic()
    app[STOPPING] = Stopping()  # serve.py hands it to the runner, which sets it
    app[ACCESS_LOG] = access_log or AccessLog()
    app[LOGIN] = LoginHandler(issuer, access, router, scope=lambda name: _scope(app, name))
    app[SUPERVISOR] = Supervisor()
    relay = (
        ObjectRelay(config, app[METRICS], clients=lambda: app.get(TOKEN_CLIENTS))
        if config.object_relay
        else None
    )
    if relay is not None:
        app[RELAY] = relay
        app.cleanup_ctx.append(relay.lifecycle)  # its own session for storage reached directly
    app[SHARING] = sharing = Sharing(config, relay, app[SUPERVISOR])
    app[METRICS].shaper, app[METRICS].cache = sharing.shaper, sharing.cache
    app[METRICS].shared_state = sharing.shared_state
    app.cleanup_ctx.append(sharing.lifespan)  # Redis, when replicas share state
    app.cleanup_ctx.append(_upstream(clock))
    if config.policy.allowed_origins:
        app.on_response_prepare.append(_allow_origin)

    app.router.add_get("/-/healthy", _endpoint(_healthy), allow_head=True)
    app.router.add_get("/-/ready", _endpoint(_ready), allow_head=True)
    app.router.add_get("/-/ready/{profile}", _endpoint(_ready), allow_head=True)
    app.router.add_get("/-/status", _endpoint(status, private=True))
    app.router.add_get("/-/metrics", _endpoint(_metrics, private=True))
    if relay is not None:
        # Not private: a relay URL is a capability, like the pre-signed URL it stands for
        # (sharing/relay.py). The object's file name may follow the id; it is decoration for
        # clients that save under the URL's last segment.
        relay_route = paths.RELAY + "{relay_id:[A-Za-z0-9_-]+}{name:(/[^/]*)?}"
        app.router.add_get(relay_route, _endpoint(relay.serve))
    app.router.add_route("*", "/-/{tail:.*}", _endpoint(_reserved))
    app.router.add_route("*", "/{tail:.*}", _dispatch)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _endpoint(handler: Handler, *, private: bool = False) -> Handler:
    """One of the proxy's own endpoints, behind its admission (guard.py)."""

    async def admitted(request: web.Request) -> web.StreamResponse:
        refusal = request.app[GUARD].admit_endpoint(request, private=private)
        return refusal if refusal is not None else await handler(request)

    return admitted


def _upstream(
    clock: Clock | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        timeouts = config.timeouts
        session = upstream_session(config)
        if RELAY in app:
            app[RELAY].session = session
        clients, forwarders = {}, {}
        for name, profile in config.profiles.items():
            assert profile.credentials is not None  # noqa: S101 - load_config's promise
            # Decided once per profile: its gateway and token endpoint never change.
            token_proxy = proxy_for(config.egress, profile.token_url)
            api_proxy = proxy_for(config.egress, profile.url)
            for what, proxy in (("token endpoint", token_proxy), ("gateway", api_proxy)):
                if proxy is not None:
                    log.info("%s (%s): through the egress proxy %s", what, name, masked(proxy))
            clients[name] = TokenClient(
                session,
                profile.token_url,
                profile.credentials,
                timeout=timeouts.token,
                clock=clock,
                proxy=token_proxy,
                refresh_margin=config.refresh_margin,
                egress=config.egress,
            )
            tokens = TokenManager(
                clients[name].fetch,
                refresh_margin=config.refresh_margin,
                clock=clock,
                name=name,
                on_refresh=app[METRICS].token_observer(name),
                supervisor=app[SUPERVISOR],  # a crash shows in /-/ready and /-/status
            )
            app[TOKENS][name] = tokens
            forwarders[name] = Forwarder(
                session,
                profile.url,
                tokens,
                replay_body_limit=config.replay_body_limit,
                replay_memory=config.replay_memory,  # one budget: app[METRICS] counts it
                client_timeout=timeouts.client,
                read_timeout=timeouts.read,
                metrics=app[METRICS],
                access_log=app[ACCESS_LOG],
                profile=name,
                shaper=app[SHARING].shaper,
                proxy=api_proxy,
                direct_note=direct_note(config.egress, profile.url),
            )
        app[TOKEN_CLIENTS] = clients
        app[FORWARDERS] = forwarders
        for tokens in app[TOKENS].values():
            await tokens.start()
        try:
            yield
        finally:
            try:
                for tokens in app[TOKENS].values():
                    await tokens.close()  # never raises, a crashed refresher included
            finally:
                await session.close()

    return lifecycle


async def _dispatch(request: web.Request) -> web.StreamResponse:
    app = request.app
    router = app[ROUTER]
    route = router.route(request.method, request.raw_path)
    refusal = app[GUARD].admit(request, route)
    if refusal is not None:
        return refusal
    if not route.known:
        return _refuse(request, 404, "UnknownProfile", router.unknown(route))
    if route.login:
        return await app[LOGIN].login(request, route.prefixed)
    caller = request.get(CALLER) or ANYONE
    name = router.for_request(route, caller)
    if name is None:
        return _refuse(
            request,
            404,
            "UnknownProfile",
            "choose a profile: /<profile>/dap/..., or log in with its name as the client id",
        )
    if not caller.may_use(name):
        return _refuse(request, 403, "ProfileNotAllowed", "this caller may not use this profile")
    return await app[SHARING].forward(request, route, app[FORWARDERS][name], name)


def _refuse(request: web.Request, status: int, error_type: str, message: str) -> web.Response:
    return error_response(status, error_type, message, request_id=request.get(REQUEST_ID))


def _scope(app: web.Application, profile: str) -> str:
    tokens = app[TOKENS].get(profile)
    token = tokens.state.token if tokens is not None else None
    return token.scope if token is not None and token.scope else "instructure-auth-proxy"


async def _allow_origin(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and origin in request.app[CONFIG].policy.allowed_origins:
        response.headers.update(cors_headers(origin))


async def _healthy(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _ready(request: web.Request) -> web.Response:
    if request.app[STOPPING].stopping:
        # First of all: the load balancer must stop sending here while requests still work.
        message = "the proxy is shutting down; send requests to another replica"
        return _refuse(request, 503, "ShuttingDown", message)
    return await ready(request)


async def _metrics(request: web.Request) -> web.Response:
    response = web.Response(body=request.app[METRICS].render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def _reserved(request: web.Request) -> web.Response:
    return _refuse(request, 404, "NotFound", "no such proxy endpoint")
