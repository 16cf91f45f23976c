"""The local token endpoint: ``POST /ids/auth/login`` answered by the proxy itself.

Tools such as the official ``dap`` CLI always log in before their first call and decode the
JWT they get back. Pointed at the proxy, they log in here: they receive a local token (a JWT
signed with a key that lives only in this process), never the gateway's token, and their own
credentials go nowhere. Whatever they later send as ``Authorization`` is replaced upstream.

The presented client id is kept in the token's ``sub`` so that a later release can pick a
credential set (profile) by it, or require known local credentials (access control).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import jwt
from aiohttp import web

from .responses import error_response, json_response

if TYPE_CHECKING:
    from .access import AccessControl
    from .routing import ProfileRouter

__all__ = ["LOCAL_TOKEN_LIFETIME", "LocalTokenIssuer", "LoginHandler"]

# Well past the official client's 5-minute re-login window; the same hour the gateway gives.
LOCAL_TOKEN_LIFETIME = 3600
_ISSUER = "instructure-auth-proxy"


class LocalTokenIssuer:
    """Signs and checks local tokens: ``issuer.issue("client-id")`` -> JWT string."""

    def __init__(
        self,
        *,
        lifetime: int = LOCAL_TOKEN_LIFETIME,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime = lifetime
        self._key = secrets.token_bytes(32)  # per process: restarting revokes every local token
        self.now = wall_clock  # seconds since the epoch, as JWT exp

    def __repr__(self) -> str:
        return f"LocalTokenIssuer(lifetime={self.lifetime})"

    def issue(
        self, client_id: str, profile: str | None = None, grant: frozenset[str] | None = None
    ) -> str:
        """A local JWT for ``client_id``; ``prof`` is the profile it chose, ``grt`` the
        profiles it may use (absent: all)."""
        now = int(self.now())
        claims: dict[str, Any] = {
            "iss": _ISSUER,
            "sub": client_id,
            "iat": now,
            "exp": now + self.lifetime,
        }
        if profile is not None:
            claims["prof"] = profile
        if grant is not None:
            claims["grt"] = sorted(grant)
        return jwt.encode(claims, self._key, algorithm="HS256")

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a valid, unexpired local token; ``None`` for anything else."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                issuer=_ISSUER,
                options={"require": ["exp", "sub"], "verify_iat": False},
                leeway=0,
            )
        except jwt.PyJWTError:
            return None
        if claims["exp"] <= self.now():  # checked against our clock, not PyJWT's
            return None
        return claims


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
