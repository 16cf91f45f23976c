"""Local tokens: the JWTs the proxy hands to tools that log in to it.

A local token names the client id that logged in (``sub``), the profile it chose (``prof``)
and how it was granted (``via``: a keyed fingerprint of the access key, the local client or
"no authentication" it was granted by, never the secret; access.py refuses it once that
grant is gone). It is never sent upstream: the gateway's token replaces it on every request.

**Which key signs.** A token is signed (HS256) by the key of the profile the login chose
(the login always chooses one). That key is derived from the profile's client id and secret
with HKDF-SHA256 and a fixed, versioned label (``_SIGNING_LABEL``), never the secret itself:
every process configured with the same credentials, a restarted one or a replica, holds the
same key, and a token says nothing of the secret. A profile's key signs only tokens naming
that profile, so one profile's secret never opens another's. With ``local_token_key_file``
the file's secret (derived the same way) signs every profile's tokens instead, to be rotated
on its own. A token naming no profile (never made by the login) is signed by that file's
key, or by a key of this process alone.

**The key ring.** A token's header names its key by ``kid``, a fingerprint of the key (an
HMAC of it: not reversible), and verification takes that key from the ring, or refuses. A
reload that changes a key keeps the previous one for one token lifetime (every token it
signed has expired by then), and at most ``MAX_RETIRED_KEYS`` of them. The previous keys
live in memory only: after a restart, only tokens of the current keys are accepted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

from ..config import Profile
from ..derived_keys import derive

__all__ = [
    "BAD_SIGNATURE",
    "EXPIRED",
    "LOCAL_TOKEN_LIFETIME",
    "MALFORMED",
    "MAX_RETIRED_KEYS",
    "UNKNOWN_KEY",
    "LocalClaims",
    "LocalTokenIssuer",
    "derive_key",
    "signing_secrets",
]

# Well past the official client's 5-minute re-login window; the same hour the gateway gives.
LOCAL_TOKEN_LIFETIME = 3600
MAX_RETIRED_KEYS = 16  # a reload a few minutes apart for an hour keeps them all
_ISSUER = "instructure-auth-proxy"
# Changing a label (v1 -> v2) changes every key: every local token then needs a new login.
_SIGNING_LABEL = b"instructure-auth-proxy local token signing key v1"
_KID_LABEL = b"instructure-auth-proxy local token kid v1"
_GRANT_LABEL = b"instructure-auth-proxy local token grant fingerprint v1"

# Why a token is refused: the 401 tells the caller (never the token), and to log in again.
MALFORMED = "it is not a local token this proxy can read"
UNKNOWN_KEY = (
    "it was signed with a key this proxy does not hold (by a proxy with other credentials, "
    "or with a key replaced more than a token lifetime ago)"
)
BAD_SIGNATURE = "its signature does not match its key"
EXPIRED = "it has expired"


def derive_key(secret: str, *context: str) -> bytes:
    """A 256-bit signing key from ``secret``: HKDF-SHA256, the label and ``context`` as info."""
    return derive(secret, _SIGNING_LABEL, *context)


def signing_secrets(
    profiles: Mapping[str, Profile], key_file: str | None
) -> dict[str | None, bytes]:
    """The signing key of each profile (by name), or the key file's for all (``None``)."""
    if key_file is not None:
        return {None: derive_key(key_file, "local_token_key_file")}
    return {
        name: derive_key(profile.credentials.client_secret, name, profile.credentials.client_id)
        for name, profile in profiles.items()
        if profile.credentials is not None
    }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class _Key:
    secret: bytes = field(repr=False)
    profile: str | None  # the profile whose tokens it signs; None: any
    kid: str = field(init=False)
    grant_key: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        kid = _b64(hmac.new(self.secret, _KID_LABEL, hashlib.sha256).digest()[:12])
        object.__setattr__(self, "kid", kid)
        grant_key = hmac.new(self.secret, _GRANT_LABEL, hashlib.sha256).digest()
        object.__setattr__(self, "grant_key", grant_key)


@dataclass(frozen=True)
class LocalClaims:
    """A verified local token: its key (``kid``), grant fingerprint, profile and expiry."""

    kid: str
    via: str
    profile: str | None
    expires: float


class LocalTokenIssuer:
    """Signs and checks local tokens: ``issuer.issue("client-id", profile, via)`` -> JWT."""

    def __init__(self, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.lifetime = LOCAL_TOKEN_LIFETIME
        self.now = wall_clock  # seconds since the epoch, as JWT exp
        # Until rekey() is given configured keys (tests, or no credentials): this process's.
        self._own = _Key(secrets.token_bytes(32), None)
        self._current: dict[str | None, _Key] = {None: self._own}
        self._retired: dict[str, tuple[_Key, float]] = {}  # kid -> (key, when replaced)

    def __repr__(self) -> str:
        keys = len(self._current) + len(self._retired)
        return f"LocalTokenIssuer(lifetime={self.lifetime}, keys={keys})"

    def rekey(self, signing: Mapping[str | None, bytes]) -> None:
        """Sign with ``signing`` from now on; replaced keys verify for one more lifetime."""
        now = self.now()
        current = {profile: _Key(secret, profile) for profile, secret in signing.items()}
        current.setdefault(None, self._own)
        kept = {key.kid for key in current.values()}
        for old in self._current.values():
            if old.kid not in kept:
                self._retired[old.kid] = (old, now)
        for kid in kept:
            self._retired.pop(kid, None)
        self._current = current
        self._prune(now)

    def _prune(self, now: float) -> None:
        retired = self._retired
        for kid in [kid for kid, (_, when) in retired.items() if when + self.lifetime <= now]:
            del retired[kid]
        while len(retired) > MAX_RETIRED_KEYS:
            del retired[next(iter(retired))]  # the oldest: dicts keep insertion order

    def kids(self) -> list[str]:
        """The ids of every key that verifies now: current ones, then recently replaced."""
        self._prune(self.now())
        return [key.kid for key in self._current.values()] + list(self._retired)

    def _key(self, kid: str) -> _Key | None:
        for key in self._current.values():
            if key.kid == kid:
                return key
        retired = self._retired.get(kid)
        if retired is None or retired[1] + self.lifetime <= self.now():
            return None
        return retired[0]

    def fingerprint(self, kid: str, grant: bytes) -> str | None:
        """The ``via`` of ``grant`` (a digest, access.py) under key ``kid``; ``None``: no key."""
        key = self._key(kid)
        return None if key is None else _fingerprint(key, grant)

    def issue(self, client_id: str, profile: str | None = None, grant: bytes = b"") -> str:
        """A local JWT for ``client_id``, signed by ``profile``'s key; ``grant`` is the
        digest of how it was granted (access.py), named in ``via`` by its fingerprint."""
        key = self._current.get(profile) or self._current[None]
        now = int(self.now())
        claims: dict[str, Any] = {"iss": _ISSUER, "sub": client_id, "iat": now}
        claims["exp"] = now + self.lifetime
        claims["via"] = _fingerprint(key, grant)
        if profile is not None:
            claims["prof"] = profile
        return jwt.encode(claims, key.secret, algorithm="HS256", headers={"kid": key.kid})

    def check(self, token: str) -> LocalClaims | str:
        """The claims of a valid, unexpired local token, or why it is refused (a message)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            return MALFORMED
        key = self._key(kid) if isinstance(kid, str) else None
        if key is None:
            return UNKNOWN_KEY
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.secret,
                algorithms=["HS256"],  # never "none", never the header's choice
                issuer=_ISSUER,
                # exp is checked below against our clock, not PyJWT's; iat is ours, not checked.
                options={
                    "require": ["exp", "sub", "via"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidSignatureError:
            return BAD_SIGNATURE
        except jwt.PyJWTError:
            return MALFORMED
        expires, via, profile = claims["exp"], claims["via"], claims.get("prof")
        if (
            not isinstance(expires, int | float)
            or not isinstance(via, str)
            or (profile is not None and not isinstance(profile, str))
            or (key.profile is not None and profile != key.profile)
        ):
            return MALFORMED
        if expires <= self.now():
            return EXPIRED
        return LocalClaims(key.kid, via, profile, float(expires))

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a valid local token (not its grant: access.py checks that), or None."""
        if isinstance(self.check(token), str):
            return None
        return dict(jwt.decode(token, options={"verify_signature": False}))

    def is_ours(self, token: str) -> bool:
        """Whether an unverifiable token says it is a local token (its ``iss``), as opposed to
        some other bearer token (the gateway's own) sent to a proxy that checks none."""
        try:
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return False
        return isinstance(claims, dict) and claims.get("iss") == _ISSUER


def _fingerprint(key: _Key, grant: bytes) -> str:
    return _b64(hmac.new(key.grant_key, grant, hashlib.sha256).digest()[:16])
