"""Object downloads through the proxy, for clients that cannot reach object storage.

Off unless ``object_relay: true``. Then each pre-signed URL in a ``POST /dap/object/url``
answer (``{"urls": {"<id>": {"url": ...}}}``) becomes ``<scheme>://<host the client
used>/-/relay/<rid>`` on the way back (``RelayFilter``, a body_filter.py hook), the rest of
the document unchanged; and ``GET``/``HEAD /-/relay/<rid>`` (``ObjectRelay.serve``) fetches
the object from storage by the same egress path as everything else and streams it back byte
for byte, ``Range`` passed through, in bounded memory.

A relay id (32 random bytes) stands for one URL a gateway answer handed out: the proxy never
fetches a URL a client names, so it is no open relay. An id expires with its signed URL,
lives in a bounded cache, and is bound to the profile and the caller that asked for it.
Storage is sent only the request's range and validator headers: never a gateway token, nor
anything a client sent to prove who it is (``Authorization``, cookies).
"""

from __future__ import annotations

import calendar
import json
import logging
import math
import secrets
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from cachetools import TLRUCache
from multidict import CIMultiDict
from yarl import URL

from ..admission.access import ANYONE, AccessControl, Caller
from ..admission.guard import CALLER
from ..config.records import EgressConfig
from ..observe.logs import BYTES_OUT, PROFILE, REQUEST_ID
from ..observe.metrics import Metrics
from ..paths import RELAY
from ..responses import error_response
from ..upstream.answer import UPSTREAM_READ_ERRORS
from ..upstream.body_filter import MAX_FILTERED_BODY
from ..upstream.egress import proxy_for
from ..upstream.failures import describe
from ..upstream.headers import HOP_BY_HOP

__all__ = ["DEFAULT_LIFETIME", "ObjectRelay", "RelayFilter", "url_lifetime"]

log = logging.getLogger("proxy.relay")

DEFAULT_LIFETIME = 15 * 60.0  # S3's usual pre-signed lifetime, when a URL does not say
MAX_LIFETIME = 7 * 24 * 3600.0  # S3's longest; a URL claiming more is held no longer
MAX_GRANTS = 100_000  # ids held at once (a few hundred bytes each); the oldest go first
# The only client headers storage is sent: what a download needs to resume or revalidate.
_TO_STORAGE = ("Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since")
# Storage's cookies and CORS are for its own origin, never for the proxy's clients.
_FROM_STORAGE_DROPPED = HOP_BY_HOP | {"set-cookie", "access-control-allow-origin"}


@dataclass(frozen=True)
class _Grant:
    """What a relay id stands for. The URL carries storage's signature: never shown."""

    url: str = field(repr=False)
    profile: str
    caller: Caller
    expires_at: float  # monotonic seconds


def url_lifetime(url: URL, now: float) -> float:
    """Seconds a pre-signed URL stays valid, from its query: ``X-Amz-Expires`` (seconds from
    ``X-Amz-Date``), or any ``...Expires`` parameter (epoch seconds when it looks like a
    date, else seconds); ``DEFAULT_LIFETIME`` when none says. ``now`` is wall-clock time."""
    query = {name.lower(): value for name, value in url.query.items()}
    for name, value in query.items():
        if not name.endswith("expires"):
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if not math.isfinite(number):
            continue
        if number > 1e9:  # an epoch time (S3 v2 "Expires", CloudFront, the simulator)
            lifetime = number - now
        elif name == "x-amz-expires" and "x-amz-date" in query:
            signed: float
            try:
                signed = calendar.timegm(time.strptime(query["x-amz-date"], "%Y%m%dT%H%M%SZ"))
            except ValueError:
                signed = now
            lifetime = signed + number - now
        else:
            lifetime = number
        return max(0.0, min(lifetime, MAX_LIFETIME))
    return DEFAULT_LIFETIME


class ObjectRelay:
    """``relay.filter(request, profile)`` rewrites an object-URL answer; ``await
    relay.serve(request)`` answers ``/-/relay/<rid>``. Give it the session once it exists."""

    def __init__(
        self,
        egress: EgressConfig,
        metrics: Metrics,
        access: AccessControl,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._egress = egress
        self._metrics = metrics
        self._access = access
        self._clock = clock
        self._wall_clock = wall_clock
        # Each id expires with its own URL (TLRU: a time to use per entry), and the cache is
        # bounded: a client asking for URLs it never fetches cannot grow it without end.
        self._grants: TLRUCache[str, _Grant] = TLRUCache(
            maxsize=MAX_GRANTS, ttu=lambda _id, grant, _now: grant.expires_at, timer=clock
        )
        self.session: aiohttp.ClientSession | None = None  # set at startup (app.py)

    def __repr__(self) -> str:
        return f"ObjectRelay(ids={len(self._grants)})"

    def register(self, url: str, profile: str, caller: Caller) -> str:
        """A new relay id for ``url``, valid as long as the URL is."""
        lifetime = url_lifetime(URL(url, encoded=True), self._wall_clock())
        relay_id = secrets.token_urlsafe(32)
        self._grants[relay_id] = _Grant(url, profile, caller, self._clock() + lifetime)
        return relay_id

    def filter(self, request: web.Request, profile: str) -> RelayFilter:
        """The body filter for one ``POST /dap/object/url`` on its way back. Its URLs have no
        profile prefix: the proxy's own endpoints live at ``/-/`` only (guard.py refuses
        them under a prefix), and the id is bound to the profile."""
        base = f"{request.scheme}://{request.host}{RELAY}"
        return RelayFilter(self, base, profile, self._caller(request))

    def _caller(self, request: web.Request) -> Caller:
        """Whom an id is bound to: with inbound authentication, the admitted caller; without
        it, anyone (a tool's local token says nothing then, and its downloads carry none)."""
        return (request.get(CALLER) or ANYONE) if self._access.required else ANYONE

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """``GET``/``HEAD /-/relay/<rid>``: the object, streamed from storage."""

        def refuse(status: int, kind: str, message: str) -> web.Response:
            return error_response(status, kind, message, request_id=request.get(REQUEST_ID))

        grant = self._grants.get(request.match_info["relay_id"])
        caller = self._caller(request)
        if grant is None or grant.caller != caller or not caller.may_use(grant.profile):
            # Someone else's id is answered as an unknown one: ids are not to be probed.
            return refuse(
                404,
                "ObjectNotFound",
                "no such object to relay, or its URL has expired: ask for the object's URL "
                "again (POST /dap/object/url)",
            )
        request[PROFILE] = grant.profile
        if self.session is None:
            return refuse(503, "NotReady", "the proxy is starting")
        url = URL(grant.url, encoded=True)  # the signature's bytes exactly as signed
        outgoing = CIMultiDict(
            (name, value) for name in _TO_STORAGE for value in request.headers.getall(name, ())
        )
        try:
            answer = await self.session.request(
                request.method,
                url,
                headers=outgoing,
                proxy=proxy_for(self._egress, url),
                allow_redirects=False,
            )
        except TimeoutError:
            return refuse(504, "GatewayTimeout", "object storage did not answer in time")
        except aiohttp.ClientError as exc:
            why = describe(exc)
            log.warning("relay: object storage at %s: %s", url.host, why)
            return refuse(
                502, "BadGateway", f"object storage at {url.host} could not be reached: {why}"
            )
        try:
            return await self._stream(request, answer, grant.profile)
        finally:
            answer.release()

    async def _stream(
        self, request: web.Request, answer: aiohttp.ClientResponse, profile: str
    ) -> web.StreamResponse:
        relayed = CIMultiDict(
            (name, value)
            for name, value in answer.headers.items()
            if name.lower() not in _FROM_STORAGE_DROPPED
        )
        response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=relayed)
        await response.prepare(request)
        sent = 0
        try:
            if request.method != "HEAD":
                while chunk := await answer.content.readany():
                    await response.write(chunk)
                    sent += len(chunk)
        except UPSTREAM_READ_ERRORS as exc:
            # Headers are out: cut the connection, so a truncated object never looks whole.
            log.warning("relay: storage failed mid-object: %s", type(exc).__name__)
            if request.transport is not None:
                request.transport.abort()
            return response
        finally:
            request[BYTES_OUT] = sent
        await response.write_eof()
        if answer.status in (200, 206) and request.method == "GET":
            self._metrics.relay_objects[profile] += 1
            self._metrics.relay_bytes[profile] += sent
        return response


class RelayFilter:
    """The ``BodyFilter`` that gives an object-URL answer the proxy's own URLs."""

    def __init__(self, relay: ObjectRelay, base: str, profile: str, caller: Caller) -> None:
        self._relay, self._base, self._profile, self._caller = relay, base, profile, caller

    def wants(self, status: int, headers: CIMultiDict[str]) -> bool:
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        return status == 200 and encoding in ("identity", "gzip", "deflate")

    def apply(self, status: int, headers: CIMultiDict[str], body: bytes) -> bytes:
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        try:
            plain = _decoded(body, encoding)
            document = json.loads(plain)
        except (ValueError, zlib.error):
            return body  # not the documented shape: relayed as it is
        urls = document.get("urls") if isinstance(document, dict) else None
        if not isinstance(urls, dict):
            return body
        rewritten = 0
        for entry in urls.values():
            url = entry.get("url") if isinstance(entry, dict) else None
            if isinstance(url, str) and url.startswith(("https://", "http://")):
                relay_id = self._relay.register(url, self._profile, self._caller)
                # The file's name stays last: clients (the dap CLI) save under it.
                name = URL(url, encoded=True).raw_name
                entry["url"] = f"{self._base}{relay_id}/{name}" if name else self._base + relay_id
                rewritten += 1
        if not rewritten:
            return body
        # Sent uncompressed: its encoding was the gateway's, and the bytes are new.
        for name in ("Content-Encoding", "ETag", "Content-MD5"):
            headers.pop(name, None)
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _decoded(body: bytes, encoding: str) -> bytes:
    if encoding == "identity":
        return body
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    decompressor = zlib.decompressobj(wbits)
    plain = decompressor.decompress(body, MAX_FILTERED_BODY)
    if decompressor.unconsumed_tail:
        raise ValueError("too large once decompressed")
    return plain
