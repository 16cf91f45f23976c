"""The upstream for what nginx cannot do: sink uploads, hold requests, stream chunked.

    python -m benchmarks.upstream_sink --listen 127.0.0.1:9001

Routes (any method unless said):

    /upload         read the body, discard it, answer ``{"received": N}``
    /slow?ms=3000   wait, then answer a small JSON body (the 1,000-slow-requests workload)
    /stream?bytes=N a GET answered with N bytes, chunked (no Content-Length)
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web

__all__ = ["create_app", "main"]

_CHUNK = bytes(256 * 1024)


async def upload(request: web.Request) -> web.Response:
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
    return web.Response(text=json.dumps({"received": received}), content_type="application/json")


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.query.get("ms", "3000")) / 1000)
    return web.Response(text='{"slow": true}', content_type="application/json")


async def stream(request: web.Request) -> web.StreamResponse:
    remaining = int(request.query.get("bytes", "0"))
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    while remaining > 0:
        chunk = _CHUNK if remaining >= len(_CHUNK) else _CHUNK[:remaining]
        await response.write(chunk)
        remaining -= len(chunk)
    await response.write_eof()
    return response


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/upload", upload)
    app.router.add_route("*", "/slow", slow)
    app.router.add_get("/stream", stream)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:9001", metavar="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    # A deep backlog: 1,000 proxied connections arrive at once, and the upstream must not
    # be what drops them.
    web.run_app(create_app(), host=host, port=int(port), backlog=4096, access_log=None, print=None)


if __name__ == "__main__":
    main()
