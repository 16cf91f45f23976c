"""One gateway token fetched (``TokenClient``); keeping it fresh is tokens/refresher.py's job.

Failures become ``CredentialsRejected`` (400/401/403: retrying cannot help) or
``TokenEndpointUnavailable`` (network, timeout, 5xx, 429, an egress proxy's refusal, an
untrusted certificate, a malformed answer), each with a message that names host, port and
reason, and the token endpoint's own words cleaned by ``redact``.
"""

from __future__ import annotations

import json
import math
import re
import time

import aiohttp
import jwt
from yarl import URL

from ..aiohttp_compat import basic_credentials
from ..config import Credentials
from ..config.records import EgressConfig
from ..errors import CredentialsRejected, TokenEndpointUnavailable
from ..observe.redact import redact
from ..tokens.token import Clock, Token
from .egress import credentials_advice, direct_note, host_port, unreachable_advice
from .failures import connection_failure
from .headers import retry_after_seconds
from .trust import tls_failure

__all__ = ["TokenClient"]

DEFAULT_LIFETIME = 3600.0  # when the gateway states neither expires_in nor a JWT exp
MAX_LIFETIME = 86400.0
MAX_TOKEN_RESPONSE = 64 * 1024  # a token response is a few hundred bytes; refuse floods
REJECTED_STATUSES = frozenset({400, 401, 403})
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # visible ASCII: no space, CR, LF or NUL
EXP_SLACK = 2.0  # seconds: a JWT exp is whole seconds, and the answer took time to come


def _gateway_message(body: bytes, credentials: Credentials) -> str:
    """The gateway's own error message, if it gave one, cleaned of every credential form."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # deep nesting: RecursionError
        return ""
    message: object = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        message = message or data.get("error_description") or data.get("message")
    if not isinstance(message, str):
        return ""
    return redact(message, credentials.client_id, credentials.client_secret)


class TokenClient:
    """Fetches one token: ``await TokenClient(session, url, creds, timeout=30).fetch()``.

    ``proxy``: the egress proxy for ``token_url`` (egress.proxy_for), credentials and all;
    its failures (unreachable, 407, a refused CONNECT) are told apart from the gateway's."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        token_url: URL,
        credentials: Credentials,
        *,
        timeout: float,
        clock: Clock | None = None,
        proxy: URL | None = None,
        refresh_margin: float = 0.0,
        egress: EgressConfig | None = None,  # names the settings in use, in messages
    ) -> None:
        self._session = session
        self._url = token_url
        self.credentials = credentials  # replaced by a reload: used from the next fetch on
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock: Clock = clock or time
        self._proxy = proxy
        self._margin = refresh_margin  # a token whose own exp falls inside it is refused
        self._egress = egress

    def __repr__(self) -> str:
        return f"TokenClient(url={str(self._url)!r}, client_id={self.credentials.client_id!r})"

    async def fetch(self) -> Token:
        """POST the credentials; raises ``CredentialsRejected``, ``TokenEndpointUnavailable``."""
        sent_at = self._clock.monotonic()
        try:
            async with self._session.post(
                self._url,
                data={"grant_type": "client_credentials"},
                headers={
                    "Authorization": basic_credentials(
                        self.credentials.client_id, self.credentials.client_secret, "utf-8"
                    ),
                    "Accept": "application/json",
                    "Accept-Encoding": "identity",
                    # The session skips automatic headers (app.py), the form's type included.
                    "Content-Type": "application/x-www-form-urlencoded",
                },
                timeout=self._timeout,
                allow_redirects=False,
                proxy=self._proxy,
            ) as response:
                status = response.status
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                body = await _read_limited(response.content, MAX_TOKEN_RESPONSE + 1)
        except TimeoutError:
            raise TokenEndpointUnavailable(
                f"the token endpoint did not answer within {self._timeout.total:g} s"
            ) from None
        except aiohttp.ClientError as exc:
            # Host, port and the OS's reason, which a user can act on; never the exception's
            # text, which can hold the URL's path and query (or the egress proxy's password).
            raise TokenEndpointUnavailable(self._unreachable(exc)) from None

        if status == 407 and self._proxy is not None:
            # The egress proxy's answer to a plain-http target: not the gateway's verdict on
            # our client credentials, so never CredentialsRejected.
            raise TokenEndpointUnavailable(self._proxy_refused(407))
        if status in REJECTED_STATUSES:
            raise CredentialsRejected(
                f"the gateway's token endpoint rejected the proxy's client credentials "
                f"(HTTP {status})",
                detail=_gateway_message(body, self.credentials),
            )
        if status != 200:
            hint = " (is token_url right?)" if status < 500 and status != 429 else ""
            raise TokenEndpointUnavailable(
                f"the token endpoint answered HTTP {status}{hint}", retry_after=retry_after
            )
        return self._parse(body, sent_at)

    def _unreachable(self, exc: aiohttp.ClientError) -> str:
        """Why the token request failed before an answer, naming what to change."""
        if self._proxy is not None:
            if isinstance(exc, aiohttp.ClientHttpProxyError):  # CONNECT answered non-200
                return self._proxy_refused(exc.status)
            if isinstance(exc, aiohttp.ClientProxyConnectionError):
                advice = "check egress_proxy (or HTTPS_PROXY/NO_PROXY)"
                if self._egress is not None:
                    advice = unreachable_advice(self._egress, self._url)
                return (
                    f"the egress proxy {host_port(self._proxy)} could not be reached: "
                    f"{connection_failure(exc)}: {advice}"
                )
        reason = tls_failure(exc) or connection_failure(exc)
        direct = direct_note(self._egress, self._url) if self._egress is not None else ""
        return (
            f"the token endpoint at {host_port(self._url)} could not be reached{direct}: {reason}"
        )

    def _proxy_refused(self, status: int) -> str:
        assert self._proxy is not None  # noqa: S101 - only asked with a proxy
        where = host_port(self._proxy)
        if status == 407:
            advice = "check egress_proxy's user and password (or egress_proxy_credentials_file)"
            if self._egress is not None:
                advice = credentials_advice(self._egress, self._url)
            return f"the egress proxy {where} refused the credentials (407): {advice}"
        return (
            f"the egress proxy {where} refused to connect to {host_port(self._url)} "
            f"(HTTP {status}): ask its administrators to allow that host, or exempt it "
            f"with NO_PROXY"
        )

    def _parse(self, body: bytes, sent_at: float) -> Token:
        if len(body) > MAX_TOKEN_RESPONSE:
            raise _invalid("too large")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # deep nesting: RecursionError
            raise _invalid("not JSON") from None
        if not isinstance(data, dict):
            raise _invalid("not a JSON object")
        access_token = data.get("access_token")
        if not isinstance(access_token, str) or not access_token.strip():
            raise _invalid("no access_token")
        if not _HEADER_SAFE.fullmatch(access_token):  # it goes in an Authorization header
            raise _invalid("an access_token with characters a header cannot carry")
        scope = data.get("scope")
        scope = scope if isinstance(scope, str) else ""
        # However long it claims to live, it is refreshed at least daily.
        lifetime = min(MAX_LIFETIME, self._lifetime(data.get("expires_in"), access_token))
        return Token(access_token, obtained_at=sent_at, expires_at=sent_at + lifetime, scope=scope)

    def _lifetime(self, expires_in: object, access_token: str) -> float:
        """Seconds the token lives: ``expires_in``, else the JWT's ``exp``, else one hour.

        The JWT's own ``exp`` is what the gateway enforces, so it is checked here, where the
        answer is read, even beside an ``expires_in``: a token already expired, or one whose
        ``exp`` comes within the refresh margin (it would need refreshing at once), is an
        invalid answer, retried with backoff like any other. ``exp`` counts whole seconds,
        so it must undercut ``expires_in`` by more than ``EXP_SLACK`` to be taken instead."""
        stated = _seconds(expires_in)
        if stated is not None and not (math.isfinite(stated) and stated > 0):
            stated = None
        try:
            exp = _seconds(jwt.decode(access_token, options={"verify_signature": False}).get("exp"))
        except jwt.PyJWTError:  # no JWT
            exp = None
        left = None if exp is None or math.isnan(exp) else exp - self._clock.time()
        if left is not None and left <= 0:
            raise _invalid(
                f"the token has already expired (its exp was {-left:.0f} s ago; "
                f"is this machine's clock right?)"
            )
        if left is None:
            return stated if stated is not None else DEFAULT_LIFETIME
        if stated is None or left >= stated - EXP_SLACK:
            return stated if stated is not None else left
        if left <= min(self._margin, stated / 2):  # the refresh would be due at once
            raise _invalid(
                f"the token expires in {left:.0f} s by its exp (not the {stated:.0f} s "
                f"stated), within the {self._margin:g} s refresh margin"
            )
        return left


def _invalid(why: str) -> TokenEndpointUnavailable:
    return TokenEndpointUnavailable(f"the token endpoint sent an invalid answer: {why}")


async def _read_limited(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body up to ``limit`` bytes, however many pieces it arrives in (``read(n)``
    alone returns the first piece only)."""
    body = bytearray()
    while len(body) < limit and (piece := await content.read(limit - len(body))):
        body += piece
    return bytes(body)


def _seconds(value: object) -> float | None:
    """A JSON number as a float (an integer past float's range as an infinity), else None."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
