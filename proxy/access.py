"""Inbound authentication: who may use the proxy, when access keys or local clients are set.

Two kinds of caller, two ways in:

- plain clients (curl, scripts) send an access key: ``Authorization: Bearer <key>``;
- tools that log in (the ``dap`` CLI) present local client credentials (or an access key
  as the secret) at ``/ids/auth/login``, and send the local token they get back.

Every comparison of a presented secret is constant-time and runs against every candidate,
so neither timing nor the number of keys tells a caller how close a guess came.
"""

from __future__ import annotations

import hmac

from cachetools import TTLCache

from .config import AccessConfig
from .login import LocalTokenIssuer

__all__ = ["AccessControl"]


def _matches_any(presented: str, candidates: tuple[str, ...]) -> bool:
    given = presented.encode()
    found = False
    for candidate in candidates:
        found |= hmac.compare_digest(given, candidate.encode())
    return found


class AccessControl:
    """Decides whether a caller is known: ``access.bearer_allowed(header_value)``."""

    def __init__(self, config: AccessConfig, issuer: LocalTokenIssuer) -> None:
        self.required = config.required
        self._keys = config.keys
        self._clients = dict(config.clients)
        self._issuer = issuer
        # Local tokens already verified, with their expiry: checking a JWT signature on
        # every request would be the most expensive thing the proxy does.
        self._verified: TTLCache[str, float] = TTLCache(maxsize=4096, ttl=300)

    def __repr__(self) -> str:
        counts = f"keys={len(self._keys)}, clients={len(self._clients)}"
        return f"AccessControl(required={self.required}, {counts})"

    def login_allowed(self, client_id: str, secret: str) -> bool:
        """May this caller get a local token? Known local credentials, or an access key."""
        if not self.required:
            return True
        expected = self._clients.get(client_id)
        client_ok = hmac.compare_digest(secret.encode(), (expected or "\0").encode())
        return (client_ok and expected is not None) | _matches_any(secret, self._keys)

    def bearer_allowed(self, authorization: str | None) -> bool:
        """May a request with this ``Authorization`` header be forwarded?"""
        if not self.required:
            return True
        if authorization is None:
            return False
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            return False
        if _matches_any(credential, self._keys):
            return True
        expires = self._verified.get(credential)
        if expires is None:
            claims = self._issuer.verify(credential)
            if claims is None:
                return False
            expires = float(claims["exp"])
            self._verified[credential] = expires
        return self._issuer.now() < expires
