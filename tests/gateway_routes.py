"""Extra routes the forwarding tests add to the gateway simulator, behind its token check.

They show what the gateway received (headers, path, body digest) and send back what the
tests need to see relayed (big and chunked bodies, gzip, cookies, redirects, slowness,
a connection cut mid-response).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json

from aiohttp import web

CHUNK = 64 * 1024


def pattern(size: int) -> bytes:
    """Deterministic bytes that are not all alike, so reordering or loss shows in a digest."""
    block = bytes(range(256)) * (CHUNK // 256)
    whole, rest = divmod(size, len(block))
    return block * whole + block[:rest]


def pattern_digest(size: int) -> str:
    digest = hashlib.sha256()
    for offset in range(0, size, CHUNK):
        digest.update(pattern(min(CHUNK, size - offset)))
    return digest.hexdigest()


GZIPPED = gzip.compress(b'{"tables": ["accounts"]}\n' * 100, mtime=0)


async def echo(request: web.Request) -> web.Response:
    """What arrived: method, raw target, every header (repeats kept), body digest."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        size += len(chunk)
    return web.json_response(
        {
            "method": request.method,
            "target": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "size": size,
            "sha256": digest.hexdigest(),
        }
    )


async def download(request: web.Request) -> web.StreamResponse:
    """``?size=N`` bytes of ``pattern``; ``&chunked=1`` for no Content-Length."""
    size = int(request.query["size"])
    response = web.StreamResponse()
    if "chunked" in request.query:
        response.enable_chunked_encoding()
    else:
        response.content_length = size
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    # aiohttp's StreamResponse sends what is written even to HEAD; a HEAD answer has no
    # body, and aiohttp 3.14's client reads stray bytes as the next answer (a 502 here).
    if request.method != "HEAD":
        for offset in range(0, size, CHUNK):
            await response.write(pattern(min(CHUNK, size - offset)))
    await response.write_eof()
    return response


async def gzipped(request: web.Request) -> web.Response:
    return web.Response(
        body=GZIPPED,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )


async def cookies(request: web.Request) -> web.Response:
    response = web.Response(text="two cookies")
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/")
    response.headers["Connection"] = "close, X-Upstream-Hop"
    response.headers["X-Upstream-Hop"] = "must not reach the client"
    response.headers["Keep-Alive"] = "timeout=5"
    response.headers["Access-Control-Allow-Origin"] = "*"  # only the proxy decides CORS
    return response


async def redirect(request: web.Request) -> web.Response:
    """A redirect to the gateway itself (rewritten by the proxy) and one elsewhere (kept)."""
    if "away" in request.query:
        location = "https://objects.example/file?sig=1"
    else:
        location = f"{request.scheme}://{request.host}/dap/job/42?x=%2F"
    return web.Response(status=302, headers={"Location": location})


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("seconds", "1")))
    return web.json_response({"slow": True})


async def cut(request: web.Request) -> web.StreamResponse:
    """Promises 1 MiB, sends 100 KiB, then drops the connection."""
    response = web.StreamResponse()
    response.content_length = 1024 * 1024
    await response.prepare(request)
    await response.write(pattern(100 * 1024))
    assert request.transport is not None
    request.transport.abort()
    return response


class Hangups:
    """Records handlers cancelled because the proxy dropped the upstream connection."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()

    async def wait_forever(self, request: web.Request) -> web.Response:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return web.Response()


def add_test_routes(app: web.Application, hangups: Hangups) -> None:
    app.router.add_route("*", "/test/echo/{tail:.*}", echo)
    app.router.add_get("/test/download", download)
    app.router.add_get("/test/gzip", gzipped)
    app.router.add_get("/test/cookies", cookies)
    app.router.add_get("/test/redirect", redirect)
    app.router.add_get("/test/slow", slow)
    app.router.add_get("/test/cut", cut)
    app.router.add_get("/test/hang", hangups.wait_forever)


def headers_of(body: bytes) -> list[tuple[str, str]]:
    return [(k, v) for k, v in json.loads(body)["headers"]]
