"""Object downloads through the proxy, for clients that cannot reach object storage.

Off unless ``object_relay: true``. Then each pre-signed URL in a ``POST /dap/object/url``
answer becomes a URL of the proxy's own (``RelayFilter``, relay_filter.py), and ``GET``/
``HEAD /-/relay/<id>`` (``ObjectRelay.serve``) fetches that one object from storage by the
same egress path as everything else and streams it back byte for byte (upstream/answer.py),
``Range`` passed through, in bounded memory.

A relay id is the storage URL, its profile and its expiry, sealed (relay_seal.py): the proxy
keeps nothing per id, so ids open on any replica with the same credentials and after a
restart, and a client asking for URLs it never fetches costs no memory. An id is a
capability, as the pre-signed URL it stands for is: whoever holds it may fetch that one
object until the URL expires, with no key (the ``dap`` CLI sends none for downloads). The
proxy never fetches a URL a client names, only one a gateway answer handed out, and only
where relay_targets.py allows. Storage is sent only the request's range and validator
headers: never a gateway token, nor anything a client sent to prove who it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..config import Config
from ..observe.logs import PROFILE, REQUEST_ID, UPSTREAM_FAILED, UPSTREAM_SECONDS
from ..observe.metrics import Metrics
from ..paths import RELAY
from ..responses import error_response
from ..upstream.answer import relay_answer
from ..upstream.body_filter import BodyRefused
from ..upstream.egress import host_port, proxy_for
from ..upstream.failures import connection_failure, describe
from ..upstream.session import upstream_session
from ..upstream.silence import Silence
from ..upstream.token_client import TokenClient
from .relay_filter import RelayFilter, url_lifetime
from .relay_seal import KeyRing, Sealed, SealExpired, SealUnknown
from .relay_storage import egress_refused, passed_headers, verdict
from .relay_targets import GuardedResolver, RefusedAddress, same_origin, target_problem

__all__ = ["ObjectRelay"]

log = logging.getLogger("proxy.relay")

# The only client headers storage is sent: what a download needs to resume or revalidate.
_TO_STORAGE = ("Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since")
_ASK_AGAIN = "ask for the object's URL again (POST /dap/object/url)"
# A relay URL's request line must fit the server's 8190 bytes (server/protocol.py) with the
# method, the host's part and the file name: a longer id would only ever get a 414.
MAX_ID = 7000
Clients = Callable[[], Mapping[str, TokenClient] | None]


class ObjectRelay:
    """``relay.filter(request, profile)`` rewrites an object-URL answer; ``await
    relay.serve(request)`` answers ``/-/relay/<id>``. Give it the session once it exists,
    and run ``relay.lifecycle`` with the app (its own connector for direct storage)."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        *,
        clients: Clients = lambda: None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._silence = Silence(config.timeouts.read)  # storage's silence, as the gateway's
        self._metrics = metrics
        # The token clients hold each profile's current secret (a reload replaces it there).
        self._clients = clients
        self._wall_clock = wall_clock
        self._keys = KeyRing(self._secrets())
        self.session: aiohttp.ClientSession | None = None  # set at startup (app.py)
        self._direct: aiohttp.ClientSession | None = None  # storage reached directly

    def __repr__(self) -> str:
        return f"ObjectRelay({self._keys!r})"

    def held(self) -> int:
        """Entries the relay holds, all structures together: its keys, never per id."""
        return len(self._keys)

    def _secrets(self) -> dict[str, str]:
        found = {
            name: profile.credentials.client_secret
            for name, profile in self._config.profiles.items()
            if profile.credentials is not None
        }
        for name, client in (self._clients() or {}).items():
            found[name] = client.credentials.client_secret
        return found

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """For ``app.cleanup_ctx``: the session for storage reached without an egress proxy,
        whose resolver refuses names that resolve to non-public addresses."""
        resolver = GuardedResolver()
        self._direct = upstream_session(self._config, resolver=resolver)
        try:
            yield
        finally:
            await self._direct.close()
            await resolver.close()

    def filter(self, request: web.Request, profile: str) -> RelayFilter:
        """The body filter for one ``POST /dap/object/url`` on its way back. Its URLs have no
        profile prefix: the proxy's own endpoints live at ``/-/`` only (guard.py refuses
        them under a prefix), and the id carries the profile."""
        self._keys.refresh(self._secrets())
        return RelayFilter(self._seal, f"{request.scheme}://{request.host}{RELAY}", profile)

    def _seal(self, url: str, profile: str) -> str:
        """The relay id for ``url``, valid as long as the URL is; ``BodyRefused`` for a URL
        the relay will not fetch (decided at sealing, so no client is handed such a URL)."""
        target = URL(url, encoded=True)
        problem = target_problem(target, self._config.profiles[profile].url, self._hosts)
        if problem is not None:
            raise BodyRefused(
                f"the gateway handed out an object URL the relay will not fetch "
                f"({_origin(target)}): {problem}"
            )
        now = self._wall_clock()
        relay_id = self._keys.seal(Sealed(url, profile, int(now + url_lifetime(target, now))))
        if len(relay_id) > MAX_ID:
            raise BodyRefused(
                f"the gateway handed out an object URL of {len(url)} characters, too long to "
                f"relay: a relay URL holds storage URLs of about {MAX_ID * 3 // 4 - 100} at most"
            )
        return relay_id

    @property
    def _hosts(self) -> tuple[str, ...]:
        return self._config.relay_hosts

    async def serve(self, request: web.Request) -> web.StreamResponse:
        """``GET``/``HEAD /-/relay/<id>``: the object, streamed from storage."""

        def refuse(status: int, kind: str, message: str, hop: str = "") -> web.Response:
            if hop:
                request[UPSTREAM_FAILED] = hop
            return error_response(status, kind, message, request_id=request.get(REQUEST_ID))

        self._keys.refresh(self._secrets())
        try:
            sealed = self._keys.open(request.match_info["relay_id"], self._wall_clock())
        except SealExpired:
            return refuse(410, "ObjectURLExpired", f"this relay URL has expired: {_ASK_AGAIN}")
        except SealUnknown:
            return refuse(
                404,
                "ObjectNotFound",
                "no such object to relay: this relay URL was not made with this proxy's "
                f"credentials, was changed, or predates two secret rotations; {_ASK_AGAIN}",
            )
        request[PROFILE] = sealed.profile
        profile = self._config.profiles.get(sealed.profile)
        url = URL(sealed.url, encoded=True)  # the signature's bytes exactly as signed
        problem = target_problem(url, profile.url, self._hosts) if profile else "no profile"
        if profile is None or problem is not None:  # another replica's settings, say
            return refuse(502, "BadGateway", f"the relay will not fetch {_origin(url)}: {problem}")
        egress = proxy_for(self._config.egress, url)
        direct = egress is None and not same_origin(url, profile.url)
        session = self._direct if direct else self.session
        if session is None:
            return refuse(503, "NotReady", "the proxy is starting")
        outgoing = CIMultiDict(
            (name, value) for name in _TO_STORAGE for value in request.headers.getall(name, ())
        )
        via = host_port(egress) if egress is not None else None
        started = time.monotonic()
        wait = self._silence.wait()
        try:
            async with wait:
                answer = await session.request(
                    request.method, url, headers=outgoing, proxy=egress, allow_redirects=False
                )
        except TimeoutError:
            return refuse(
                504, "GatewayTimeout", f"object storage at {url.host} timed out", "storage:timeout"
            )
        except aiohttp.ClientHttpProxyError as exc:  # its answer to CONNECT: never relayed
            refused = egress_refused(exc.status, via or "?", url.host or "")
            log.warning("relay: %s", refused.message)
            return refuse(refused.status, refused.type, refused.message, refused.hop)
        except aiohttp.ClientError as exc:
            return refuse(502, "BadGateway", *_unreachable(exc, url, via))
        request[UPSTREAM_SECONDS] = time.monotonic() - started  # to storage's headers
        try:
            if (failure := verdict(answer.status, answer.headers, url.host or "", via)) is not None:
                log.warning("relay: %s", failure.message)
                response = refuse(failure.status, failure.type, failure.message, failure.hop)
                if failure.status == 416 and "Content-Range" in answer.headers:
                    response.headers["Content-Range"] = answer.headers["Content-Range"]  # size
                return response
            return await relay_answer(
                request,
                answer,
                passed_headers(answer.headers),
                None,
                wait,
                on_complete=lambda sent: self._count(request, answer.status, sealed.profile, sent),
            )
        finally:
            answer.release()

    def _count(self, request: web.Request, status: int, profile: str, sent: int) -> None:
        if status in (200, 206) and request.method == "GET":
            self._metrics.relay_objects[profile] += 1
            self._metrics.relay_bytes[profile] += sent


def _unreachable(exc: aiohttp.ClientError, url: URL, via: str | None) -> tuple[str, str]:
    """The message and ``up=`` hop for a fetch that got no answer."""
    error = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else None
    if isinstance(error, RefusedAddress):
        message = f"object storage at {url.host} is not relayed: {error}"
        log.warning("relay: %s", message)
        return message, "storage:refused"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        message = f"the egress proxy at {via} could not be reached: {connection_failure(exc)}"
        log.warning("relay: %s", message)
        return message, "egress:unreachable"
    why = describe(exc)
    log.warning("relay: object storage at %s: %s", url.host, why)
    return f"object storage at {url.host} could not be reached: {why}", "storage:unreachable"


def _origin(url: URL) -> str:
    """``https://host:port``: what a message may show of a storage URL (never its query)."""
    host = url.raw_host or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{url.port}" if url.port is not None and not url.is_default_port() else ""
    return f"{url.scheme}://{host}{port}"
