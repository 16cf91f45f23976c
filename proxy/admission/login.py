"""The local token endpoint: ``POST /ids/auth/login`` answered by the proxy itself.

Tools such as the official ``dap`` CLI always log in before their first call and decode the
JWT they get back. Pointed at the proxy, they log in here: they receive a local token
(local_tokens.py), never the gateway's token, and their own credentials go nowhere.

The client id chooses the profile (routing.py) unless the path does; with inbound
authentication configured, the credentials must be known to access.py, and failed attempts
are throttled per address (throttle.py). The token is signed with the chosen profile's key
and names the grant it came from (local_tokens.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..observe.logs import REQUEST_ID
from ..responses import error_response, json_response
from .access import AccessControl
from .local_tokens import LocalTokenIssuer
from .routing import ProfileRouter
from .throttle import LoginThrottle

__all__ = ["LoginHandler"]

log = logging.getLogger("proxy.login")

MAX_LOGIN_BODY = 64 * 1024  # "grant_type=client_credentials" is 29 bytes
# A gateway client id ("us-east-1#" and a UUID) is under 50; the id is in every local token
# (``sub``), and the verified-token cache holds 4,096 of them: the bound keeps that small.
MAX_CLIENT_ID = 256


class LoginHandler:
    """Answers ``POST [/<profile>]/ids/auth/login`` in exactly the gateway's four-key shape."""

    def __init__(
        self,
        issuer: LocalTokenIssuer,
        access: AccessControl,
        router: ProfileRouter,
        scope: Callable[[str], str],
    ) -> None:
        self._issuer = issuer
        self._access = access
        self._router = router
        self._scope = scope  # a profile's real scope, for tools that show it
        self._throttle = LoginThrottle()

    async def login(self, request: web.Request, prefixed: str | None = None) -> web.Response:
        def refuse(status: int, error_type: str, message: str, **extra: Any) -> web.Response:
            request_id = request.get(REQUEST_ID)
            return error_response(status, error_type, message, request_id=request_id, **extra)

        try:
            basic = aiohttp.BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            return refuse(
                401,
                "AuthenticationError",
                "log in with HTTP Basic credentials: a local client id and secret, "
                "or any when the proxy requires none (it holds the real ones)",
            )
        if not basic.login:
            return refuse(401, "AuthenticationError", "the client id must not be empty")
        if len(basic.login) > MAX_CLIENT_ID:
            return refuse(
                401,
                "AuthenticationError",
                f"the client id is longer than {MAX_CLIENT_ID} characters",
            )
        address = request.remote or "local"
        wait = self._throttle.shut_out(address)
        if wait > 0:
            return refuse(
                429,
                "TooManyRequests",
                f"too many failed logins from this address; retry in {wait:.0f} s",
                retry_after=wait,
            )
        caller = self._access.login(basic.login, basic.password)
        if caller is None:
            self._throttle.failed(address)
            return refuse(401, "AuthenticationError", "unknown local client id or secret")
        self._throttle.succeeded(address)
        profile = self._router.for_login(prefixed, basic.login)
        if profile is None:
            return refuse(
                404,
                "UnknownProfile",
                "no profile for this client id: log in at /<profile>/ids/auth/login, or "
                "with a profile's name or local client id as the client id",
            )
        if not caller.may_use(profile):
            return refuse(403, "ProfileNotAllowed", "these credentials may not use this profile")
        if (request.content_length or 0) > MAX_LOGIN_BODY:
            return refuse(413, "RequestTooLarge", "a login body is a short form")
        try:
            # The bound holds for chunked bodies too, which announce no length.
            form = await request.clone(client_max_size=MAX_LOGIN_BODY).post()
        except web.HTTPRequestEntityTooLarge:
            return refuse(413, "RequestTooLarge", "a login body is a short form")
        except (ValueError, LookupError, HttpProcessingError) as exc:
            # A malformed body (multipart without a boundary, an unknown charset...): one
            # line, by class; the body's bytes are the client's and stay out of the log.
            log.info("refused a malformed login body (%s)", type(exc).__name__)
            return refuse(
                400,
                "BadRequest",
                "the login body must be a form: grant_type=client_credentials "
                "(application/x-www-form-urlencoded)",
            )
        if form.get("grant_type") != "client_credentials":
            return refuse(
                400,
                "ValidationError",
                "grant_type must be client_credentials (form-encoded request body)",
            )
        return json_response(
            {
                "access_token": self._issuer.issue(basic.login, profile, caller.via),
                "expires_in": self._issuer.lifetime,
                "scope": self._scope(profile),
                "token_type": "bearer",
            }
        )
