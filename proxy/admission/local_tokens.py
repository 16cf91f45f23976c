"""Local tokens: the JWTs the proxy hands to tools that log in to it.

Signed (HS256) with a key made at startup that lives only in this process, so restarting
the proxy revokes every local token. A local token names the client id that logged in
(``sub``), the profile it chose (``prof``) and the profiles it may use (``grt``). It is
never sent upstream: the gateway's token replaces it on every request.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import jwt

__all__ = ["LOCAL_TOKEN_LIFETIME", "LocalTokenIssuer"]

# Well past the official client's 5-minute re-login window; the same hour the gateway gives.
LOCAL_TOKEN_LIFETIME = 3600
_ISSUER = "instructure-auth-proxy"


class LocalTokenIssuer:
    """Signs and checks local tokens: ``issuer.issue("client-id")`` -> JWT string."""

    def __init__(self, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.lifetime = LOCAL_TOKEN_LIFETIME
        self._key = secrets.token_bytes(32)  # per process: restarting revokes every local token
        self.now = wall_clock  # seconds since the epoch, as JWT exp

    def __repr__(self) -> str:
        return f"LocalTokenIssuer(lifetime={self.lifetime})"

    def issue(
        self, client_id: str, profile: str | None = None, grant: frozenset[str] | None = None
    ) -> str:
        """A local JWT for ``client_id``; without a ``grant``, no ``grt``: every profile."""
        now = int(self.now())
        claims: dict[str, Any] = {"iss": _ISSUER, "sub": client_id, "iat": now}
        claims["exp"] = now + self.lifetime
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
