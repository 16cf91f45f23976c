"""Who is calling: client credentials, the JWTs the simulator issues, and bearer tokens.

Pure functions and one small class, free of aiohttp, so the login handler and the bearer
middleware stay short. Tokens are HS256 JWTs signed with a key made fresh for each app:
a token from another simulator, or from the proxy's own token endpoint, is rejected.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import jwt

__all__ = [
    "Claims",
    "TokenIssuer",
    "authenticate_client",
    "bearer_token",
    "parse_basic",
    "scope_for",
]

_ISSUER = "instructure-auth-proxy-simulator"


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """``(client_id, secret)`` from an ``Authorization: Basic`` value, or None if malformed.

    Client ids such as ``us-east-1#abc`` carry a ``#``: it is plain data inside base64,
    and only the first ``:`` separates id from secret (RFC 7617), as the secret may hold one.
    """
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id:
        return None
    return client_id, secret


def authenticate_client(clients: Mapping[str, str], client_id: str, secret: str) -> bool:
    """Whether ``secret`` is ``client_id``'s; compared in constant time."""
    expected = clients.get(client_id)
    # Compare against something even for an unknown id, so timing does not tell which
    # ids exist.
    matches = hmac.compare_digest(
        (expected if expected is not None else secret + "!").encode(), secret.encode()
    )
    return expected is not None and matches


def scope_for(client_id: str) -> str:
    """The ``scope`` the gateway reports: service, principal, partner and region."""
    region, hash_sign, principal = client_id.partition("#")
    if not hash_sign:  # ids without a region prefix exist; the gateway then cannot tell
        region, principal = "unknown", client_id
    return f"urn:canvas:dap principal:{principal} partner:{principal} region:{region}"


@dataclass(frozen=True)
class Claims:
    """What a valid token says: its client, expiry (epoch seconds) and generation."""

    sub: str
    exp: int
    generation: int


@dataclass(eq=False)
class TokenIssuer:
    """Issues and checks the simulator's JWTs: ``issuer.issue("us-east-1#x")``.

    Each token records the revocation ``generation`` it was issued in (a private claim,
    ``gen``); the caller refuses tokens of an older generation. Unlike a cut-off time,
    this lets a test revoke and log in again within the same second.
    """

    lifetime: int
    clock: Callable[[], float]
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    def issue(self, client_id: str, generation: int = 0) -> str:
        """A fresh signed token for ``client_id``, valid for ``lifetime`` seconds."""
        issued_at = int(self.clock())
        claims = {
            "iss": _ISSUER,
            "sub": client_id,
            "scope": scope_for(client_id),
            "iat": issued_at,
            "exp": issued_at + self.lifetime,
            "jti": secrets.token_hex(8),
            "gen": generation,
        }
        return jwt.encode(claims, self._key, algorithm="HS256")

    def verify(self, token: str) -> Claims | None:
        """The token's claims if this issuer signed it and it has not expired."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                issuer=_ISSUER,
                # Time is checked below against the injected clock, not PyJWT's.
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["exp", "sub", "gen"],
                },
            )
            parsed = Claims(str(claims["sub"]), int(claims["exp"]), int(claims["gen"]))
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        return parsed if parsed.exp > self.clock() else None


def bearer_token(authorization: str | None, x_instauth: str | None) -> str | None:
    """The token a request presents, or None.

    ``Authorization`` wins whenever present, even when it is not a bearer token; the
    deprecated ``x-instauth`` header counts only without it, as at the real gateway.
    """
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None
    if x_instauth is not None:
        value = x_instauth.strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        return value or None
    return None
