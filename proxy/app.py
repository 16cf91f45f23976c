"""``create_app(config)``: the proxy as an aiohttp application.

Every request first passes the admission middleware (guard.py). Routes, in the order
they match:

    /-/healthy            the process is alive (200)
    /-/ready              200 while a valid gateway token is held, else 503
    /-/status             JSON: version, upstream, uptime, token state (status.py)
    /-/metrics            Prometheus text format (metrics.py)
    /-/...                reserved for the proxy: anything else here is 404, never forwarded
    POST /ids/auth/login  the local token endpoint (login.py)
    everything else       forwarded to the gateway (forward.py)

The upstream ``ClientSession`` and the token manager live for the life of the app, opened and
closed in ``cleanup_ctx``; they are reached through typed ``AppKey``s, never globals, so
several apps (or, later, several credential sets) can share one process.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from .access import AccessControl
from .config import Config
from .forward import Forwarder
from .guard import LOGIN_PATH, cors_headers, guard_middleware
from .login import LocalTokenIssuer, LoginHandler
from .metrics import CONTENT_TYPE, Metrics
from .responses import error_response, json_response
from .status import status_document
from .tokens import Clock, TokenClient, TokenManager

__all__ = [
    "ACCESS",
    "CONFIG",
    "FORWARDER",
    "LOCAL_TOKENS",
    "METRICS",
    "TOKENS",
    "create_app",
    "upstream_session",
]

CONFIG = web.AppKey("config", Config)
ACCESS = web.AppKey("access", AccessControl)
TOKENS = web.AppKey("tokens", TokenManager)
FORWARDER = web.AppKey("forwarder", Forwarder)
LOCAL_TOKENS = web.AppKey("local_tokens", LocalTokenIssuer)
METRICS = web.AppKey("metrics", Metrics)
STARTED = web.AppKey("started", float)
TOKENS_PROFILE = "default"  # one credential set, for now; profiles will name several


def create_app(config: Config, *, clock: Clock | None = None) -> web.Application:
    """The proxy application; ``config.upstream.credentials`` must be set."""
    if config.upstream.credentials is None:
        raise ValueError("create_app needs credentials; load_config reports them missing")
    issuer = LocalTokenIssuer()
    access = AccessControl(config.access, issuer)
    app = web.Application(
        middlewares=[guard_middleware(config.policy, access)],
        # Replayable bodies are read whole, so the server must accept that much.
        client_max_size=max(config.replay_body_limit, 1024 * 1024) + 1,
    )
    app[CONFIG] = config
    app[LOCAL_TOKENS] = issuer
    app[ACCESS] = access
    app[METRICS] = Metrics(lambda: {TOKENS_PROFILE: app[TOKENS]} if TOKENS in app else {})
    app[STARTED] = time.monotonic()
    app.cleanup_ctx.append(_upstream(clock))
    if config.policy.allowed_origins:
        app.on_response_prepare.append(_allow_origin)

    app.router.add_get("/-/healthy", _healthy, allow_head=True)
    app.router.add_get("/-/ready", _ready, allow_head=True)
    app.router.add_get("/-/status", _status)
    app.router.add_get("/-/metrics", _metrics)
    app.router.add_route("*", "/-/{tail:.*}", _reserved)
    login = LoginHandler(issuer, access, scope=lambda: _scope(app))
    app.router.add_post(LOGIN_PATH, login.login)
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


def upstream_session(config: Config) -> aiohttp.ClientSession:
    """The one session to the gateway: a keep-alive pool, shared by every request."""
    timeouts = config.timeouts
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=config.pool_size, ttl_dns_cache=300),
        # A proxy relays cookies; it must not keep them, nor mix them between clients.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Relay the gateway's bytes as they are: Content-Encoding is the client's business.
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(
            total=None, connect=timeouts.connect, sock_read=timeouts.read
        ),
    )


def _upstream(clock: Clock | None):  # type: ignore[no-untyped-def]
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        config = app[CONFIG]
        timeouts = config.timeouts
        session = upstream_session(config)
        upstream = config.upstream
        if upstream.credentials is None:  # create_app checked; this keeps mypy informed
            raise ValueError("no credentials")
        client = TokenClient(
            session, upstream.token_url, upstream.credentials, timeout=timeouts.token, clock=clock
        )
        tokens = TokenManager(
            client.fetch,
            refresh_margin=config.refresh_margin,
            clock=clock,
            name=TOKENS_PROFILE,
            on_refresh=app[METRICS].token_observer(TOKENS_PROFILE),
        )
        app[TOKENS] = tokens
        app[FORWARDER] = Forwarder(
            session,
            upstream.url,
            tokens,
            replay_body_limit=config.replay_body_limit,
            client_timeout=timeouts.client,
            metrics=app[METRICS],
            profile=TOKENS_PROFILE,
        )
        await tokens.start()
        try:
            yield
        finally:
            await tokens.close()
            await session.close()

    return lifecycle


def _scope(app: web.Application) -> str:
    token = app[TOKENS].current if TOKENS in app else None
    return token.scope if token is not None and token.scope else "instructure-auth-proxy"


async def _allow_origin(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and origin in request.app[CONFIG].policy.allowed_origins:
        response.headers.update(cors_headers(origin))


async def _forward(request: web.Request) -> web.StreamResponse:
    return await request.app[FORWARDER].forward(request)


async def _healthy(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _ready(request: web.Request) -> web.Response:
    tokens = request.app[TOKENS]
    if tokens.ready:
        return json_response({"status": "ready"})
    error = tokens.last_error
    reason = error.message if error is not None else "no gateway token yet"
    return error_response(503, "NotReady", reason)


async def _status(request: web.Request) -> web.Response:
    app = request.app
    return json_response(
        status_document(
            upstream=str(app[CONFIG].upstream.url),
            uptime=time.monotonic() - app[STARTED],
            requests_served=app[METRICS].requests_served,
            profiles={TOKENS_PROFILE: app[TOKENS]},
        )
    )


async def _metrics(request: web.Request) -> web.Response:
    response = web.Response(body=request.app[METRICS].render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def _reserved(request: web.Request) -> web.Response:
    return error_response(404, "NotFound", f"no such proxy endpoint: {request.path}")
