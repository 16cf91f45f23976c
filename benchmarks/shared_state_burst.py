"""What sharing the rate budgets through Redis adds to a job creation (issue 18).

    python -m benchmarks.shared_state_burst [--bursts 30] [--size 5]

The simulator (no rate limits of its own), a redis-server, and two proxies started as a
user would (``python -m proxy serve``): ``local`` (shaping as in one process) and ``redis``
(``shared_state`` on). Both allow far more job creations than a burst holds
(``rate_limits.create_job``), so nothing waits for a slot: what differs is the reservation
itself, one Lua script in Redis, against the in-memory budget. Bursts of ``size`` job
creations at once go to each proxy in turn; the latency of every request is kept, and the
percentiles are printed with the difference. Needs redis-server (apt-get install
redis-server). Loopback only; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from .lab import REPO, which
from .procs import Processes, free_port, wait_for_port

CREATE = "/dap/query/canvas/table/accounts/data"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def _burst(http: aiohttp.ClientSession, url: str, size: int) -> list[float]:
    async def one() -> float:
        started = time.perf_counter()
        async with http.post(url + CREATE, json={"format": "jsonl"}) as resp:
            await resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"{url}: HTTP {resp.status}")
        return (time.perf_counter() - started) * 1000

    return list(await asyncio.gather(*(one() for _ in range(size))))


async def _measure(urls: dict[str, str], bursts: int, size: int) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {name: [] for name in urls}
    async with aiohttp.ClientSession() as http:
        for url in urls.values():  # warm up: connections, the first token, the script
            await _burst(http, url, size)
        for number in range(bursts):
            order = list(urls) if number % 2 == 0 else list(reversed(urls))
            for name in order:
                latencies[name] += await _burst(http, urls[name], size)
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.shared_state_burst")
    parser.add_argument("--bursts", type=int, default=30)
    parser.add_argument("--size", type=int, default=5, help="job creations at once (5)")
    args = parser.parse_args(argv)
    redis_server = which("redis-server")
    if redis_server is None:
        print("redis-server not found: apt-get install redis-server", file=sys.stderr)
        return 2
    run_dir = Path(tempfile.mkdtemp(prefix="iap-burst-"))
    procs = Processes(run_dir / "logs")
    (run_dir / "logs").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAP_", "PYTHON"))}
    env["PYTHONPATH"] = str(REPO)
    try:
        simulator, redis = free_port(), free_port()
        argv = [sys.executable, "-m", "proxy", "simulate", "--port", str(simulator)]
        proc = procs.start(
            "simulator",
            [*argv, "--no-rate-limits", "--log-level", "error"],
            core=None,
            env=env,
            cwd=run_dir,
        )
        wait_for_port(simulator, proc)
        argv = [redis_server, "--port", str(redis), "--bind", "127.0.0.1", "--save", ""]
        wait_for_port(redis, procs.start("redis", argv, core=None, cwd=run_dir))
        from proxy.simulator import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET

        urls = {}
        for name, extra in (
            ("local", {}),
            ("redis", {"DAP_PROXY_SHARED_STATE": f"redis://127.0.0.1:{redis}/0"}),
        ):
            port = free_port()
            proxy_env = (
                env
                | extra
                | {
                    "DAP_CLIENT_ID": DEMO_CLIENT_ID,
                    "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET,
                    "DAP_PROXY_RATE_LIMITS_CREATE_JOB": "1000000",
                    "DAP_PROXY_LOG_LEVEL": "warning",
                }
            )
            argv = [sys.executable, "-m", "proxy", "serve", "--port", str(port)]
            argv += ["--upstream", f"http://127.0.0.1:{simulator}"]
            wait_for_port(port, procs.start(name, argv, core=None, env=proxy_env, cwd=run_dir))
            urls[name] = f"http://127.0.0.1:{port}"
        latencies = asyncio.run(_measure(urls, args.bursts, args.size))
    finally:
        procs.stop_all()
    print(f"{args.bursts} bursts of {args.size} job creations at once, per proxy; ms")
    print(f"{'':8} {'p50':>7} {'p90':>7} {'p99':>7} {'mean':>7}")
    rows = {}
    for name, values in latencies.items():
        rows[name] = (
            _percentile(values, 0.5),
            _percentile(values, 0.9),
            _percentile(values, 0.99),
            statistics.fmean(values),
        )
        print(f"{name:8} " + " ".join(f"{v:7.2f}" for v in rows[name]))
    added = [on - off for on, off in zip(rows["redis"], rows["local"], strict=True)]
    print(f"{'added':8} " + " ".join(f"{v:7.2f}" for v in added))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
