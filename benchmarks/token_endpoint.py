"""The gateway simulator as the product's token endpoint, with a count of token requests.

    python -m benchmarks.token_endpoint --listen 127.0.0.1:9002 --stats 127.0.0.1:9003 \
        --token-lifetime 4

The simulator runs as ``instructure-auth-proxy simulate --no-rate-limits`` would run it; a
second listener (``--stats``, never forwarded to by the proxy) answers ``GET /`` with
``{"token_requests": N, "logins": M}`` read from the simulator's own state: every POST to
the token endpoint, whatever its outcome, and the successful ones. That is the ground truth
for "token requests per refresh", with no log scraping.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from proxy.simulator import SIMULATOR_STATE, SimulatorSettings, create_simulator_app

__all__ = ["main"]


async def _run(listen: str, stats: str, token_lifetime: int) -> None:
    simulator = create_simulator_app(
        SimulatorSettings(token_lifetime=token_lifetime, rate_limits=False)
    )
    state = simulator[SIMULATOR_STATE]

    async def counts(request: web.Request) -> web.Response:
        return web.json_response({"token_requests": state.token_requests, "logins": state.logins})

    stats_app = web.Application()
    stats_app.router.add_get("/", counts)
    runners = []
    for app, address in ((simulator, listen), (stats_app, stats)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, _, port = address.rpartition(":")
        await web.TCPSite(runner, host, int(port)).start()
        runners.append(runner)
    try:
        await asyncio.Event().wait()  # until SIGTERM/SIGINT ends the process
    finally:
        for runner in runners:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--stats", required=True, metavar="HOST:PORT")
    parser.add_argument("--token-lifetime", type=int, default=3599, metavar="SECONDS")
    args = parser.parse_args()
    asyncio.run(_run(args.listen, args.stats, args.token_lifetime))


if __name__ == "__main__":
    main()
