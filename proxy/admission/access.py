"""Inbound identity: who is calling, and which profiles (credential sets) they may use.

Two kinds of caller, two ways in:

- plain clients (curl, scripts) send an access key: ``Authorization: Bearer <key>``;
- tools that log in (the ``dap`` CLI) present local client credentials (or an access key
  as the secret) at ``/ids/auth/login``, and send the local token they get back. That token
  carries the profile chosen at login and names its grant (local_tokens.py).

With no keys and no local clients configured, everyone is let in (loopback by default),
but a local token still says which profile its tool chose.

**Tokens die with their grant.** A local token names how it was granted: an access key, a
local client (its id and secret: a changed secret is a new grant), or no authentication,
by a fingerprint keyed with its signing key (never the secret). Every request with a local
token asks ``_grant`` whether that grant still exists: a removed key or client, or
authentication turned on, refuses the tokens it granted (401, log in again), on reload or
after a restart, and the tokens of every other grant keep working. The fingerprints are
computed when the configuration is applied, one table per signing key, so the check is a
dictionary lookup; the grant's profiles are always today's, not those at login. (A
fingerprint is compared by lookup, not in constant time: it is part of a token whose
signature has already been checked, and tells its holder nothing it does not hold.)

Every comparison of a presented secret is constant-time and runs against every candidate,
so neither timing nor the number of keys tells a caller how close a guess came.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cachetools import TTLCache

from ..config import AccessConfig, Grant, Profile
from .local_tokens import EXPIRED, LocalClaims, LocalTokenIssuer, signing_secrets

__all__ = ["ANYONE", "GRANT_GONE", "AccessControl", "Caller", "Refusal"]


@dataclass(frozen=True)
class Caller:
    """An admitted caller: the profiles it may use (``None``: all), and the one it chose.
    ``via`` is the digest of the grant it came in by (``b""``: no authentication)."""

    grant: Grant = None
    profile: str | None = None
    via: bytes = field(default=b"", repr=False, compare=False)

    def may_use(self, profile: str) -> bool:
        return (self.grant is None or profile in self.grant) and self.profile in (None, profile)


ANYONE = Caller()


@dataclass(frozen=True)
class Refusal:
    """Why a credential was refused: the 401's message (``""``: the plain "requires an access
    key" one); ``guess``: counts as a guess at a credential (throttle.py). A token this proxy
    signed, expired or of a grant now gone, is no guess: its signature held."""

    message: str
    guess: bool = True


GRANT_GONE = (
    "the access key or local client it was granted by is no longer configured here, or "
    "the proxy now requires credentials and did not when it was issued"
)


def _local_refusal(reason: str, guess: bool) -> Refusal:
    return Refusal(
        f"this local token is not accepted: {reason}; log in again "
        "(POST /ids/auth/login) for a new one",
        guess,
    )


def _digest(kind: str, *secret: str) -> bytes:
    """What a grant is known by in memory: a hash, so that a ``Caller`` holds no secret."""
    return hashlib.sha256("\0".join(("grant v1", kind, *secret)).encode()).digest()


def _match(presented: str, candidates: Iterable[str]) -> str | None:
    """The candidate equal to ``presented``, comparing against every one in constant time."""
    given = presented.encode()
    found = None
    for candidate in candidates:
        if hmac.compare_digest(given, candidate.encode()):
            found = candidate
    return found


class AccessControl:
    """Identifies callers: ``access.admit(authorization_header)``, ``access.login(id, s)``."""

    def __init__(
        self,
        config: AccessConfig,
        issuer: LocalTokenIssuer,
        profiles: Mapping[str, Profile] | None = None,
    ) -> None:
        self._issuer = issuer
        self.update(config, profiles)

    def update(self, config: AccessConfig, profiles: Mapping[str, Profile] | None = None) -> None:
        """New keys and local clients, and new signing keys from ``profiles`` (or the key
        file): at startup and on every reload. Tokens whose grant is gone are refused."""
        if profiles is not None or config.token_key is not None:
            self._issuer.rekey(signing_secrets(profiles or {}, config.token_key))
        self.required = config.required
        self._keys = {
            key: Caller(grant, via=_digest("key", key)) for key, grant in config.keys.items()
        }
        self._clients = {
            client_id: (secret, Caller(grant, via=_digest("client", client_id, secret)))
            for client_id, (secret, grant) in config.clients.items()
        }
        grants = [*self._keys.values(), *(caller for _, caller in self._clients.values())]
        # kid -> fingerprint -> the Caller it grants (a profile chosen at login added later).
        self._grants: dict[str, dict[str, Caller]] = {}
        for kid in self._issuer.kids():
            table = self._grants[kid] = {}
            for caller in grants:
                if (fingerprint := self._issuer.fingerprint(kid, caller.via)) is not None:
                    table[fingerprint] = caller
        # Local tokens already verified: checking a JWT signature on every request would be
        # the most expensive thing the proxy does. Emptied here: keys may have changed.
        self._verified: TTLCache[str, LocalClaims] = TTLCache(maxsize=4096, ttl=300)

    def __repr__(self) -> str:
        counts = f"keys={len(self._keys)}, clients={len(self._clients)}"
        return f"AccessControl(required={self.required}, {counts})"

    def login(self, client_id: str, secret: str) -> Caller | None:
        """Who logs in with these credentials: known local credentials, or an access key."""
        if not self.required:
            return ANYONE
        expected, caller = self._clients.get(client_id, ("\0", None))
        client_ok = hmac.compare_digest(secret.encode(), expected.encode())
        key = _match(secret, self._keys)
        if client_ok and caller is not None:
            return caller
        return self._keys[key] if key is not None else None

    def identify(self, authorization: str | None) -> Caller | None:
        """Who sends this ``Authorization`` header; ``None`` when they must be refused."""
        outcome = self.admit(authorization)
        return outcome if isinstance(outcome, Caller) else None

    def admit(self, authorization: str | None) -> Caller | Refusal:
        """Who sends this ``Authorization`` header, or why they are refused (401)."""
        scheme, _, credential = (authorization or "").partition(" ")
        credential = credential.strip()
        if scheme.lower() == "bearer" and credential:
            if self.required and (key := _match(credential, self._keys)) is not None:
                return self._keys[key]
            outcome = self._local_token(credential)
            if outcome is not None:
                return outcome
        return Refusal("") if self.required else ANYONE

    def _local_token(self, credential: str) -> Caller | Refusal | None:
        """The caller of a local token, why it is refused, or ``None``: not a local token."""
        claims = self._verified.get(credential)
        if claims is None:
            if credential.count(".") != 2:
                return None  # not a JWT: spare the decoder
            checked = self._issuer.check(credential)
            if isinstance(checked, str):
                if not self._issuer.is_ours(credential):
                    return None  # some other bearer token: not ours to explain
                return _local_refusal(checked, guess=checked != EXPIRED)
            claims = self._verified[credential] = checked
        elif claims.expires <= self._issuer.now():
            return _local_refusal(EXPIRED, guess=False)
        return self._grant(claims)

    def _grant(self, claims: LocalClaims) -> Caller | Refusal:
        """The one check, on every request, that a local token's grant still exists."""
        if not self.required:
            return Caller(None, claims.profile)  # everyone is let in: every grant stands
        granted = self._grants.get(claims.kid, {}).get(claims.via)
        if granted is None:
            return _local_refusal(GRANT_GONE, guess=False)
        return Caller(granted.grant, claims.profile, granted.via)
