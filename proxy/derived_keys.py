"""Keys derived from a secret the proxy holds: one function for every purpose.

HKDF-SHA256 (RFC 5869), no salt, and as info the purpose's own versioned label followed by
its context (a profile's name, a client id), joined by NUL bytes. A purpose never sees
another's key, a key never reveals its secret, and every process with the same secret
derives the same key: what lets local tokens and relay URLs outlive a process and work on
every replica. The purposes: local token signing (admission/local_tokens.py) and relay URL
sealing (sharing/relay_seal.py).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["derive"]


def derive(secret: str, label: bytes, *context: str, length: int = 32) -> bytes:
    """``length`` bytes of key for the purpose ``label`` in ``context``, from ``secret``."""
    info = b"\0".join([label, *(part.encode() for part in context)])
    hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info)
    return hkdf.derive(secret.encode())
