"""Inbound identity: who is calling, and which profiles (credential sets) they may use.

Two kinds of caller, two ways in:

- plain clients (curl, scripts) send an access key: ``Authorization: Bearer <key>``;
- tools that log in (the ``dap`` CLI) present local client credentials (or an access key
  as the secret) at ``/ids/auth/login``, and send the local token they get back. That token
  carries the profile chosen at login and the caller's grant.

With no keys and no local clients configured, everyone is let in (loopback by default),
but a local token still says which profile its tool chose.

Every comparison of a presented secret is constant-time and runs against every candidate,
so neither timing nor the number of keys tells a caller how close a guess came.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from cachetools import TTLCache

from ..config import AccessConfig, Grant
from .local_tokens import LocalTokenIssuer

__all__ = ["ANYONE", "AccessControl", "Caller"]


@dataclass(frozen=True)
class Caller:
    """An admitted caller: the profiles it may use (``None``: all), and the one it chose."""

    grant: Grant = None
    profile: str | None = None

    def may_use(self, profile: str) -> bool:
        return (self.grant is None or profile in self.grant) and self.profile in (None, profile)


ANYONE = Caller()


def _match(presented: str, candidates: Iterable[str]) -> str | None:
    """The candidate equal to ``presented``, comparing against every one in constant time."""
    given = presented.encode()
    found = None
    for candidate in candidates:
        if hmac.compare_digest(given, candidate.encode()):
            found = candidate
    return found


class AccessControl:
    """Identifies callers: ``access.identify(authorization_header)``, ``access.login(id, s)``."""

    def __init__(self, config: AccessConfig, issuer: LocalTokenIssuer) -> None:
        self._issuer = issuer
        self.update(config)

    def update(self, config: AccessConfig) -> None:
        """New keys and local clients (a reload). Local tokens already issued stay valid
        until they expire: their grant was checked when they were issued."""
        self.required = config.required
        self._keys = dict(config.keys)
        self._clients = dict(config.clients)
        # Local tokens already verified: checking a JWT signature on every request would be
        # the most expensive thing the proxy does.
        self._verified: TTLCache[str, tuple[float, Caller]] = TTLCache(maxsize=4096, ttl=300)

    def __repr__(self) -> str:
        counts = f"keys={len(self._keys)}, clients={len(self._clients)}"
        return f"AccessControl(required={self.required}, {counts})"

    def login(self, client_id: str, secret: str) -> Caller | None:
        """Who logs in with these credentials: known local credentials, or an access key."""
        if not self.required:
            return ANYONE
        expected, grant = self._clients.get(client_id, ("\0", None))
        client_ok = hmac.compare_digest(secret.encode(), expected.encode())
        key = _match(secret, self._keys)
        if client_ok and client_id in self._clients:
            return Caller(grant)
        return Caller(self._keys[key]) if key is not None else None

    def identify(self, authorization: str | None) -> Caller | None:
        """Who sends this ``Authorization`` header; ``None`` when they must be refused."""
        scheme, _, credential = (authorization or "").partition(" ")
        credential = credential.strip()
        if scheme.lower() == "bearer" and credential:
            if self.required and (key := _match(credential, self._keys)) is not None:
                return Caller(self._keys[key])
            if (caller := self._local_token(credential)) is not None:
                return caller
        return None if self.required else ANYONE

    def _local_token(self, credential: str) -> Caller | None:
        cached = self._verified.get(credential)
        if cached is None:
            if credential.count(".") != 2:
                return None  # not a JWT: spare the decoder
            claims = self._issuer.verify(credential)
            if claims is None:
                return None
            grant = claims.get("grt")
            caller = Caller(frozenset(grant) if grant is not None else None, claims.get("prof"))
            cached = self._verified[credential] = (float(claims["exp"]), caller)
        expires, caller = cached
        return caller if self._issuer.now() < expires else None
