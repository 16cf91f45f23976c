"""The local token endpoint: ``POST /ids/auth/login`` answered by the proxy itself.

Tools such as the official ``dap`` CLI always log in before their first call and decode the
JWT they get back. Pointed at the proxy, they log in here: they receive a local token
(local_tokens.py), never the gateway's token, and their own credentials go nowhere.
Whatever they later send as ``Authorization`` is replaced upstream.

The client id chooses the profile (routing.py) unless the path does; with inbound
authentication configured, the credentials must be known to access.py.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from aiohttp import web

from .access import AccessControl
from .local_tokens import LocalTokenIssuer
from .responses import error_response, json_response
from .routing import ProfileRouter

__all__ = ["LoginHandler"]


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

    async def login(self, request: web.Request, prefixed: str | None = None) -> web.Response:
        try:
            basic = aiohttp.BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            return error_response(
                401,
                "AuthenticationError",
                "log in with HTTP Basic credentials: a local client id and secret, "
                "or any when the proxy requires none (it holds the real ones)",
            )
        if not basic.login:
            return error_response(401, "AuthenticationError", "the client id must not be empty")
        caller = self._access.login(basic.login, basic.password)
        if caller is None:
            return error_response(
                401, "AuthenticationError", "unknown local client id or secret for this proxy"
            )
        profile = self._router.for_login(prefixed, basic.login)
        if profile is None:
            return error_response(
                404,
                "UnknownProfile",
                "no profile for this client id: log in at /<profile>/ids/auth/login, or "
                "with a profile's name or local client id as the client id",
            )
        if not caller.may_use(profile):
            return error_response(
                403, "ProfileNotAllowed", "these credentials may not use this profile"
            )
        form = await request.post()
        grant_type = form.get("grant_type")
        if grant_type != "client_credentials":
            return error_response(
                400,
                "ValidationError",
                "grant_type must be client_credentials (form-encoded request body)",
            )
        return json_response(
            {
                "access_token": self._issuer.issue(basic.login, profile, caller.grant),
                "expires_in": self._issuer.lifetime,
                "scope": self._scope(profile),
                "token_type": "bearer",
            }
        )
