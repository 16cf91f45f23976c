"""Cleaning text that came from outside before the proxy shows it anywhere.

A token endpoint's error message is the one piece of gateway-provided text the proxy
repeats (in a client's 401 body, ``/-/status``, the log, the ``token`` command). An endpoint
that quotes the request back could put our credentials in it, in any encoding. ``redact``
removes every form we know: the secret itself, ``id:secret`` in base64 (standard and
URL-safe, padded or not) and URL encoding, the value of any ``Basic`` or ``Bearer``
credential, and any JWT-shaped string. Non-printable characters go too, and the result is
bounded in length.
"""

from __future__ import annotations

import base64
import re
from urllib.parse import quote, quote_plus

__all__ = ["MASK", "redact"]

MASK = "[secure]"
MAX_LENGTH = 200
# A JWT's header is base64url JSON, so it starts with "eyJ" ('{"').
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_SCHEME_CREDENTIAL = re.compile(r"(?i)\b(basic|bearer)(\s+|=|:\s*)[A-Za-z0-9+/=._~%-]+")


def _encodings(client_id: str, secret: str) -> set[str]:
    pair = f"{client_id}:{secret}"
    forms = {secret, pair}
    for encoded in (base64.b64encode(pair.encode()), base64.urlsafe_b64encode(pair.encode())):
        forms |= {encoded.decode(), encoded.decode().rstrip("=")}
    for plain in (secret, pair):
        forms |= {quote(plain, safe=""), quote_plus(plain), quote(plain)}
    return {form for form in forms if form}


def redact(text: str, client_id: str = "", secret: str = "") -> str:
    """``text`` with every credential form masked, printable only, at most 200 characters."""
    printable = "".join(ch if ch.isprintable() else " " for ch in text)
    if secret:
        # Longest first: a form that contains another must be masked whole.
        for form in sorted(_encodings(client_id, secret), key=len, reverse=True):
            printable = printable.replace(form, MASK)
    printable = _JWT.sub(MASK, printable)
    printable = _SCHEME_CREDENTIAL.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", printable)
    if len(printable) > MAX_LENGTH:
        printable = printable[: MAX_LENGTH - 3] + "..."
    return printable
