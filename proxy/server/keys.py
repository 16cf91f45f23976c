"""The app's state, under typed ``AppKey``s (never globals): what ``create_app`` puts there."""

from __future__ import annotations

from aiohttp import web

from ..admission.access import AccessControl
from ..admission.guard import Guard
from ..admission.local_tokens import LocalTokenIssuer
from ..admission.login import LoginHandler
from ..admission.routing import ProfileRouter
from ..config import Config
from ..observe.background import Supervisor
from ..observe.logs import AccessLog
from ..observe.metrics import Metrics
from ..sharing.dispatch import Sharing
from ..sharing.relay import ObjectRelay
from ..tokens.manager import TokenManager
from ..upstream.forward import Forwarder
from ..upstream.token_client import TokenClient
from .drain import Stopping

__all__ = [
    "ACCESS",
    "ACCESS_LOG",
    "CONFIG",
    "FORWARDERS",
    "GUARD",
    "LOCAL_TOKENS",
    "LOGIN",
    "METRICS",
    "RELAY",
    "ROUTER",
    "SHARING",
    "STARTED",
    "STOPPING",
    "SUPERVISOR",
    "TOKENS",
    "TOKEN_CLIENTS",
]

CONFIG = web.AppKey("config", Config)
ACCESS = web.AppKey("access", AccessControl)
TOKENS = web.AppKey("tokens", dict[str, TokenManager])
TOKEN_CLIENTS = web.AppKey("token_clients", dict[str, TokenClient])
FORWARDERS = web.AppKey("forwarders", dict[str, Forwarder])
LOCAL_TOKENS = web.AppKey("local_tokens", LocalTokenIssuer)
ROUTER = web.AppKey("router", ProfileRouter)
GUARD = web.AppKey("guard", Guard)
LOGIN = web.AppKey("login", LoginHandler)
METRICS = web.AppKey("metrics", Metrics)
STARTED = web.AppKey("started", float)
ACCESS_LOG = web.AppKey("access_log", AccessLog)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
SHARING = web.AppKey("sharing", Sharing)
RELAY = web.AppKey("relay", ObjectRelay)
STOPPING = web.AppKey("stopping", Stopping)  # set on the stop signal (drain.py)
