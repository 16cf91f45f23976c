"""Relay URLs that carry their own state: the storage URL, its profile and its expiry, sealed.

A relay id is ``base64url(version | key id | nonce | AES-GCM(plaintext))``: authenticated
(any change to any byte is refused) and confidential (the storage URL and its signature stay
hidden from whoever holds the relay URL). Nothing is remembered per id, so an id made by one
process opens on any replica configured with the same credentials and after a restart.

The key is derived per profile by HKDF-SHA256 from the profile's client secret, under an
info label used for nothing else (``INFO``): never the secret itself, and never the key of
any other purpose (the local tokens use their own). A short key id, derived alongside,
says which key sealed a value. When a secret rotates (a reload), its previous keys are kept
(``KEYS_PER_PROFILE`` in all), so ids sealed before the rotation open until they expire.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..derived_keys import derive

__all__ = ["INFO", "KEYS_PER_PROFILE", "KeyRing", "SealExpired", "SealUnknown", "Sealed"]

INFO = b"instructure-auth-proxy/relay-url/v1"  # the relay's keys only; versioned
VERSION = b"\x01"
KEYS_PER_PROFILE = 3  # the current key and the two before it (rotations, reloads)
_KID, _NONCE, _TAG = 8, 12, 16
_HEAD = len(VERSION) + _KID
_EXPIRY = struct.Struct(">QB")  # expiry (epoch seconds), the profile name's length


class SealUnknown(Exception):
    """Not an id this proxy sealed: malformed, changed, or under a key no longer held."""


class SealExpired(Exception):
    """An authentic id whose storage URL has expired."""


@dataclass(frozen=True)
class Sealed:
    """What a relay id stands for. The URL carries storage's signature: never shown."""

    url: str = field(repr=False)
    profile: str
    expires_at: int  # wall-clock epoch seconds: the same on every replica and after restarts


@dataclass(frozen=True)
class _Key:
    profile: str
    kid: bytes
    aead: AESGCM = field(repr=False)


def _derive(profile: str, secret: str) -> _Key:
    """The profile's relay key and its id: two independent parts of one HKDF output (the id
    reveals nothing of the key). The profile's name is in the label, so two profiles that
    share a secret still get different keys."""
    material = derive(secret, INFO, profile, length=32 + _KID)
    return _Key(profile, material[32:], AESGCM(material[:32]))


class KeyRing:
    """``ring.refresh(secrets)`` with the profiles' current client secrets (cheap when nothing
    changed); ``ring.seal(sealed)``; ``ring.open(text, now)``. Bounded: ``KEYS_PER_PROFILE``
    keys per configured profile, whatever is sealed or opened."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        self._seen: dict[str, str] = {}  # the secret each current key came from (same object)
        self._keys: dict[str, deque[_Key]] = {}  # newest first
        self._by_kid: dict[bytes, _Key] = {}
        self.refresh(secrets)

    def __repr__(self) -> str:
        return f"KeyRing(profiles={sorted(self._keys)}, keys={len(self._by_kid)})"

    def __len__(self) -> int:
        """Keys held, all profiles together."""
        return len(self._by_kid)

    def refresh(self, secrets: Mapping[str, str]) -> None:
        """Take each profile's current secret; a new one's key becomes current, the old
        ones stay (up to the bound) for the ids they sealed."""
        for profile, secret in secrets.items():
            if self._seen.get(profile) is secret:  # the same object: unchanged (no HKDF)
                continue
            self._seen[profile] = secret
            key = _derive(profile, secret)
            keys = self._keys.setdefault(profile, deque(maxlen=KEYS_PER_PROFILE))
            if keys and keys[0].kid == key.kid:
                continue  # an equal secret, read again
            if len(keys) == keys.maxlen:
                self._by_kid.pop(keys[-1].kid, None)
            keys.appendleft(key)
            self._by_kid[key.kid] = key

    def seal(self, sealed: Sealed) -> str:
        """The relay id for ``sealed``, under its profile's current key."""
        key = self._keys[sealed.profile][0]
        profile = sealed.profile.encode()
        plain = _EXPIRY.pack(sealed.expires_at, len(profile)) + profile + sealed.url.encode()
        head = VERSION + key.kid
        nonce = os.urandom(_NONCE)  # random: far fewer than 2**32 seals per key
        return _text(head + nonce + key.aead.encrypt(nonce, plain, head))

    def open(self, text: str, now: float) -> Sealed:
        """What ``text`` stands for; ``SealUnknown`` or ``SealExpired`` (as of ``now``)."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise SealUnknown from None
        if _text(raw) != text:  # one text per id: not a last character's unused bits changed
            raise SealUnknown
        key = self._by_kid.get(raw[len(VERSION) : _HEAD])
        if raw[:1] != VERSION or key is None or len(raw) < _HEAD + _NONCE + _TAG:
            raise SealUnknown
        nonce = raw[_HEAD : _HEAD + _NONCE]
        try:
            plain = key.aead.decrypt(nonce, raw[_HEAD + _NONCE :], raw[:_HEAD])
            expires_at, length = _EXPIRY.unpack_from(plain)
            start = _EXPIRY.size
            profile = plain[start : start + length].decode()
            url = plain[start + length :].decode()
        except (InvalidTag, struct.error, UnicodeDecodeError):
            raise SealUnknown from None
        if profile != key.profile:  # sealed by us, so never; checked all the same
            raise SealUnknown
        if now >= expires_at:
            raise SealExpired
        return Sealed(url, profile, expires_at)


def _text(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
