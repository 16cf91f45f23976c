"""The minimal proxy: what a user would hand-write with aiohttp, kept as the yardstick.

One shared ``ClientSession``, bodies streamed both ways with ``iter_any()``, a static
``Authorization`` header, no logging, no token handling, no error mapping, no features::

    python -m benchmarks.minimal_proxy --listen 127.0.0.1:8081 --upstream http://127.0.0.1:8082

It drops the hop-by-hop headers (a proxy that forwarded ``Connection`` or
``Transfer-Encoding`` would be broken, not minimal) and nothing else. It runs on uvloop
when uvloop is importable, by the same rule as the product, so that the comparison is
between the two proxies' code and not between event loops.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, istr

__all__ = ["create_app", "main"]

_HOP_BY_HOP = frozenset(
    istr(name)
    for name in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
    )
)
_SESSION = web.AppKey("session", aiohttp.ClientSession)


def create_app(upstream: str, pool_size: int) -> web.Application:
    """The minimal proxy to ``upstream`` (``http://host:port``), ``pool_size`` connections."""
    app = web.Application()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[_SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=pool_size),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        yield
        await app[_SESSION].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k not in _HOP_BY_HOP)
        headers["Authorization"] = "Bearer x"
        body = request.content if request.body_exists else None
        async with app[_SESSION].request(
            request.method,
            upstream + request.raw_path,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as up:
            response = web.StreamResponse(
                status=up.status,
                headers=CIMultiDict((k, v) for k, v in up.headers.items() if k not in _HOP_BY_HOP),
            )
            await response.prepare(request)
            async for chunk in up.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8081", metavar="HOST:PORT")
    parser.add_argument("--upstream", required=True, metavar="URL")
    parser.add_argument("--pool-size", type=int, default=100)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    app = create_app(args.upstream.rstrip("/"), args.pool_size)
    try:
        uvloop = importlib.import_module("uvloop")
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(app, host, int(port)))


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await asyncio.Event().wait()  # until SIGTERM/SIGINT ends the process
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
