"""What aiohttp 3.14 offers that 3.13 (still supported) lacks, defined once for both:
``RequestKey`` (3.14 warns on a plain string as a request key) and ``basic_credentials``
(3.14 deprecates ``aiohttp.BasicAuth`` for ``encode_basic_auth``, which 3.13 lacks). When
the oldest supported aiohttp is 3.14 (``server/aiohttp_support.py``: SUPPORTED), those two
replace this module.
"""

from __future__ import annotations

import base64
from typing import Generic, Self, TypeVar

__all__ = ["RequestKey", "basic_credentials"]

_T = TypeVar("_T")

try:
    # mypy checks against the aiohttp installed: one of the two ignores is unused on each.
    from aiohttp.web import RequestKey  # type: ignore[attr-defined, unused-ignore]
except ImportError:  # aiohttp 3.13

    class RequestKey(str, Generic[_T]):  # type: ignore[no-redef, unused-ignore]
        """``REQUEST_ID = RequestKey("request_id", str)``: a typed key for ``request[...]``."""

        __slots__ = ()

        def __new__(cls, name: str, t: type[_T] | None = None) -> Self:
            return super().__new__(cls, name)


def basic_credentials(login: str, password: str, encoding: str = "latin1") -> str:
    """``headers={"Authorization": basic_credentials(client_id, secret, "utf-8")}``."""
    if ":" in login:  # it would end the login early (RFC 7617, section 2)
        raise ValueError('a ":" is not allowed in a Basic login')
    return "Basic " + base64.b64encode(f"{login}:{password}".encode(encoding)).decode("ascii")
