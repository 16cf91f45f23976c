"""The proxy's peak memory under many concurrent uploads small enough to be held for replay.

    python -m benchmarks.replay_memory [--requests 200] [--size 1048576] [--hold 2]
        [--replay-memory BYTES] [--proxy-dir DIR] [--rounds 3]

The proxy runs as a subprocess (``python -m proxy serve`` from ``--proxy-dir``, default this
repository: point it at a checkout of an older commit to measure that one) in front of the
gateway simulator, which runs in this process with one extra route: read the body, wait
``--hold`` seconds, answer. ``--requests`` POSTs of ``--size`` bytes, each with a
``Content-Length``, are sent at once; the proxy's peak resident memory is its ``VmHWM``
(/proc/<pid>/status) after the burst, against the same figure after a warm-up request.
``proxy_replay_bytes_held`` is scraped half-way through the hold, where the proxy has it.
Everything listens on 127.0.0.1. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from proxy.simulator import (
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    SimulatorSettings,
    create_simulator_app,
)

from .procs import free_port

__all__ = ["main"]

_ROOT = Path(__file__).resolve().parent.parent
_MIB = 1024 * 1024


def _kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} for pid {pid}")


async def _gateway(hold: float) -> tuple[web.AppRunner, str]:
    async def slow_upload(request: web.Request) -> web.Response:
        size = 0
        async for chunk in request.content.iter_any():  # read() would stop at 1 MiB
            size += len(chunk)
        await asyncio.sleep(hold)
        return web.json_response({"received": size})

    app = create_simulator_app(SimulatorSettings(rate_limits=False))
    app.router.add_post("/bench/upload", slow_upload)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    return runner, f"http://127.0.0.1:{port}"


def _start_proxy(
    proxy_dir: Path, upstream: str, port: int, replay_memory: int | None
) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DAP_")},
        "DAP_CLIENT_ID": DEMO_CLIENT_ID,
        "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET,
        "DAP_PROXY_LOG_LEVEL": "warning",
    }
    if replay_memory is not None:
        env["DAP_PROXY_REPLAY_MEMORY"] = str(replay_memory)
    argv = [sys.executable, "-m", "proxy", "serve", "--listen", f"127.0.0.1:{port}"]
    argv += ["--upstream", upstream]
    # cwd first on sys.path: `-m proxy` imports the proxy of --proxy-dir, not this one.
    return subprocess.Popen(argv, cwd=proxy_dir, env=env)


async def _ready(http: aiohttp.ClientSession, url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the proxy exited with status {proc.returncode}")
        try:
            async with http.get(url + "/-/ready") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("the proxy did not become ready in 20 s")


async def _held(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/-/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("proxy_replay_bytes_held "):
            return f"{float(line.split()[1]) / _MIB:.0f} MiB"
    return "n/a"


async def _round(args: argparse.Namespace) -> tuple[int, int, str, int]:
    """(KiB after warm-up, KiB peak, replay bytes held mid-burst, requests answered 200)."""
    runner, upstream = await _gateway(args.hold)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _start_proxy(args.proxy_dir, upstream, port, args.replay_memory)
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            await _ready(http, url, proc)
            body = bytes(args.size)
            async with http.post(url + "/bench/upload", data=body) as resp:
                assert resp.status == 200, resp.status
            baseline = _kib(proc.pid, "VmHWM")

            async def upload() -> int:
                async with http.post(url + "/bench/upload", data=body) as resp:
                    await resp.read()
                    return resp.status

            burst = asyncio.gather(*(upload() for _ in range(args.requests)))
            await asyncio.sleep(args.hold / 2)
            held = await _held(http, url)
            statuses = await burst
            peak = _kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(10)
        await runner.cleanup()
    return baseline, peak, held, statuses.count(200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--size", type=int, default=_MIB, help="bytes per upload")
    parser.add_argument("--hold", type=float, default=2.0, help="seconds the upstream waits")
    parser.add_argument("--replay-memory", type=int, default=None, help="default: the proxy's")
    parser.add_argument("--proxy-dir", type=Path, default=_ROOT)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    revision = subprocess.run(
        ["git", "-C", str(args.proxy_dir), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    print(
        f"proxy {revision or args.proxy_dir}: {args.requests} x {args.size} B POSTs, "
        f"upstream holds {args.hold:g} s, replay_memory "
        f"{args.replay_memory if args.replay_memory is not None else 'default'}"
    )
    for number in range(1, args.rounds + 1):
        baseline, peak, held, ok = asyncio.run(_round(args))
        print(
            f"round {number}: VmHWM {baseline / 1024:.0f} MiB after warm-up, "
            f"{peak / 1024:.0f} MiB peak; replay bytes held mid-burst {held}; "
            f"{ok}/{args.requests} answered 200"
        )


if __name__ == "__main__":
    main()
