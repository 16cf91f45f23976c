#!/usr/bin/env python3
"""Soak the proxy: many thousands of requests across many token rotations, and count
every error a client sees. The target is zero.

Usage, from the repository root with the test extra installed::

    python scripts/soak.py          # 20,000 requests, 32 at a time, 500/s, at most 300 s
    python scripts/soak.py --requests 100000 --concurrency 64 --rate 0 --max-seconds 900
    python scripts/soak.py --revoke-every 5     # also revoke every token every 5 s
    python scripts/soak.py --token-lifetime 6 --seed 7

What it does:

- starts the gateway simulator in this process on 127.0.0.1 (an ephemeral port) with
  short-lived tokens (``--token-lifetime``, default 4 s, so the proxy refreshes every 2 s),
  jobs that complete at once, no rate limits, and one extra route behind the same bearer
  check, ``/soak/download?size=N``, which streams N deterministic bytes;
- starts the proxy as a subprocess (``python -m proxy serve``) in front of it, on another
  ephemeral loopback port, and waits for ``/-/ready``;
- runs ``--requests`` requests from ``--concurrency`` workers through the proxy, paced
  at ``--rate`` per second (0: as fast as they go) so that the run spans many token
  rotations (20,000 at 500/s take 40 s: about 20 rotations of a 4 s token), a seeded
  mix of: listing tables, table schemas, snapshot jobs (small JSON POSTs), job polls,
  object-URL requests followed by the object's download straight from the simulator's
  storage (as the ``dap`` client does: without the proxy, without a token), and, now and
  then, a 1 to 4 MiB download through the proxy whose length and digest are checked;
- with ``--revoke-every S``, revokes every token issued so far each S seconds, so requests
  in flight get the gateway's 401 and the proxy must refresh once and replay them;
- stops when all requests are done or after ``--max-seconds``, whichever comes first, then
  sends the proxy SIGTERM and waits for it to exit.

It reports the requests made and their rate, latency percentiles, client-visible errors by
kind (an unexpected status, a body that is not what was asked for, or the exception a
client got), the token rotations (tokens the simulator issued after the first), token
requests per rotation (1.00 when every refresh takes exactly one request), how many 401s
the gateway answered (the proxy replays those invisibly), the proxy's warning and error
log lines, and whether the secret or any issued token ever appeared in its log.

Exit status: 0 when no client saw an error, the proxy exited 0 and its log holds no
secret; 1 otherwise. Running out of ``--max-seconds`` is reported, and is not a failure.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gzip
import hashlib
import json
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as `python scripts/soak.py` from a checkout

from proxy.simulator import (  # noqa: E402 - after the path set-up above
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    SIMULATOR_STATE,
    SimulatorSettings,
    create_simulator_app,
)
from proxy.simulator.identity import TokenIssuer  # noqa: E402

TABLES = ("accounts", "courses", "users", "enrollments", "submissions")
BLOCK = bytes(range(256)) * 256  # 64 KiB of the download pattern
MiB = 1024 * 1024


# ---------------------------------------------------------------------- the simulator


class RecordingIssuer(TokenIssuer):
    """The simulator's issuer, keeping every token so the proxy's log can be searched."""

    issued: list[str]

    def issue(self, client_id: str, generation: int = 0) -> str:
        token = super().issue(client_id, generation)
        self.issued.append(token)
        return token


def pattern(size: int) -> bytes:
    whole, rest = divmod(size, len(BLOCK))
    return BLOCK * whole + BLOCK[:rest]


async def soak_download(request: web.Request) -> web.StreamResponse:
    """``?size=N``: N bytes of ``pattern``, streamed in 64 KiB writes with a length."""
    size = int(request.query["size"])
    response = web.StreamResponse()
    response.content_length = size
    response.content_type = "application/octet-stream"
    await response.prepare(request)
    for offset in range(0, size, len(BLOCK)):
        await response.write(BLOCK[: min(len(BLOCK), size - offset)])
    await response.write_eof()
    return response


@dataclass
class GatewayCounts:
    unauthorized: int = 0  # 401s the gateway answered (the proxy replays them)


async def start_simulator(
    token_lifetime: int, counts: GatewayCounts
) -> tuple[web.AppRunner, str, web.Application]:
    settings = SimulatorSettings(token_lifetime=token_lifetime, job_duration=0, rate_limits=False)
    app = create_simulator_app(settings)
    state = app[SIMULATOR_STATE]
    issuer = RecordingIssuer(settings.token_lifetime, settings.clock)
    issuer.issued = []
    state.tokens = issuer

    @web.middleware
    async def count_401(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if response.status == 401:
            counts.unauthorized += 1
        return response

    app.middlewares.insert(0, count_401)  # outermost: it sees the bearer check's answers
    app.router.add_get("/soak/download", soak_download)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}", app


# ---------------------------------------------------------------------- the proxy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ProxyLog:
    """What the proxy wrote on stderr, read as it comes so the pipe never fills."""

    lines: int = 0
    refreshed: int = 0
    problems: list[str] = field(default_factory=list)  # WARNING and ERROR lines
    text: list[str] = field(default_factory=list)

    async def follow(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            decoded = line.decode(errors="replace").rstrip()
            self.lines += 1
            self.text.append(decoded)
            if " token refreshed" in decoded:
                self.refreshed += 1
            if " WARNING " in decoded or " ERROR " in decoded or "Traceback" in decoded:
                self.problems.append(decoded)


async def start_proxy(upstream: str, port: int) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAP_")}
    env.update(
        {
            "DAP_CLIENT_ID": DEMO_CLIENT_ID,
            "DAP_CLIENT_SECRET": DEMO_CLIENT_SECRET,
            "DAP_PROXY_TIMEOUTS_SHUTDOWN": "10",
            "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    # Our own interpreter and module, no shell.
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--upstream",
        upstream,
        env=env,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_ready(http: aiohttp.ClientSession, url: str, process: Any) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"the proxy exited with status {process.returncode}")
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url + "/-/ready") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError("the proxy did not become ready within 30 s")


# ---------------------------------------------------------------------- the load


class Unexpected(Exception):
    """A response a client would not accept: its kind is the error's key in the report."""


@dataclass
class Load:
    proxy: str
    http: aiohttp.ClientSession
    rng: random.Random
    jobs: collections.deque[tuple[str, tuple[str, ...]]] = field(
        default_factory=lambda: collections.deque(maxlen=200)
    )
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    bytes_through: int = 0

    async def json(self, method: str, path: str, expect: int, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        async with self.http.request(method, self.proxy + path, data=data, headers=headers) as r:
            raw = await r.read()
        self.bytes_through += len(raw)
        if r.status != expect:
            raise Unexpected(f"HTTP {r.status}", raw[:200].decode(errors="replace"))
        return json.loads(raw)

    async def list_tables(self) -> None:
        answer = await self.json("GET", "/dap/query/canvas/table", 200)
        if "accounts" not in answer.get("tables", []):
            raise Unexpected("bad body: tables")

    async def schema(self) -> None:
        table = self.rng.choice(TABLES)
        answer = await self.json("GET", f"/dap/query/canvas/table/{table}/schema", 200)
        if set(answer) != {"schema", "version"}:
            raise Unexpected("bad body: schema")

    async def create_job(self) -> None:
        table = self.rng.choice(TABLES)
        path = f"/dap/query/canvas/table/{table}/data"
        job = await self.json("POST", path, 200, {"format": "jsonl"})
        if job.get("status") != "complete" or not job.get("objects"):
            raise Unexpected("bad body: job")
        self.jobs.append((job["id"], tuple(o["id"] for o in job["objects"])))

    async def a_job(self) -> tuple[str, tuple[str, ...]]:
        if not self.jobs:
            await self.create_job()
        return self.rng.choice(self.jobs)

    async def poll_job(self) -> None:
        job_id, _ = await self.a_job()
        job = await self.json("GET", f"/dap/job/{job_id}", 200)
        if job.get("id") != job_id or job.get("status") != "complete":
            raise Unexpected("bad body: job poll")

    async def object_download(self) -> None:
        """An object URL through the proxy, then the object straight from storage."""
        _, objects = await self.a_job()
        object_id = self.rng.choice(objects)
        answer = await self.json("POST", "/dap/object/url", 200, [{"id": object_id}])
        url = answer["urls"][object_id]["url"]
        async with self.http.get(url) as r:  # no Authorization: a pre-signed URL
            raw = await r.read()
        if r.status != 200:
            raise Unexpected(f"storage HTTP {r.status}")
        try:
            gzip.decompress(raw)
        except (OSError, EOFError):
            raise Unexpected("bad body: object is not gzip") from None

    async def big_download(self) -> None:
        size = self.rng.randint(1 * MiB, 4 * MiB)
        digest = hashlib.sha256()
        received = 0
        async with self.http.get(f"{self.proxy}/soak/download?size={size}") as r:
            if r.status != 200:
                raise Unexpected(f"HTTP {r.status}")
            async for chunk in r.content.iter_chunked(256 * 1024):
                digest.update(chunk)
                received += len(chunk)
        self.bytes_through += received
        if received != size or digest.hexdigest() != hashlib.sha256(pattern(size)).hexdigest():
            raise Unexpected("bad body: download length or digest")

    def pick(self) -> tuple[str, Callable[[], Awaitable[None]]]:
        roll = self.rng.random()
        for share, name, call in (
            (0.40, "list tables", self.list_tables),
            (0.25, "schema", self.schema),
            (0.13, "create job (POST)", self.create_job),
            (0.12, "poll job", self.poll_job),
            (0.08, "object URL + download", self.object_download),
        ):
            if roll < share:
                return name, call
            roll -= share
        return "1-4 MiB download", self.big_download

    async def one(self) -> None:
        name, call = self.pick()
        self.kinds[name] += 1
        started = time.monotonic()
        try:
            await call()
        except Unexpected as exc:
            self.fail(exc.args[0], " ".join(map(str, exc.args[1:])))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError) as exc:
            self.fail(type(exc).__name__, str(exc)[:200])
        self.latencies.append(time.monotonic() - started)

    def fail(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        self.examples.setdefault(kind, detail)


async def run_load(
    load: Load, requests: int, concurrency: int, rate: float, deadline: float
) -> bool:
    """Run until ``requests`` are done or ``deadline``; True if all were done in time."""
    left = requests
    next_start = time.monotonic()

    async def worker() -> None:
        nonlocal left, next_start
        while left > 0 and time.monotonic() < deadline:
            left -= 1
            if rate > 0:  # each request gets the next start slot, 1/rate apart
                now = time.monotonic()
                slot = max(now, next_start)
                next_start = slot + 1 / rate
                await asyncio.sleep(slot - now)
            await load.one()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return left <= 0


# ---------------------------------------------------------------------- main


async def revoke(faults: Any, every: float) -> None:
    """Revoke every token issued so far, each ``every`` seconds (never, if 0)."""
    while every > 0:
        await asyncio.sleep(every)
        faults.revoke_tokens()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


async def soak(args: argparse.Namespace) -> int:
    counts = GatewayCounts()
    runner, gateway_url, app = await start_simulator(args.token_lifetime, counts)
    state = app[SIMULATOR_STATE]
    port = free_port()
    proxy_url = f"http://127.0.0.1:{port}"
    process = await start_proxy(gateway_url, port)
    assert process.stderr is not None  # noqa: S101 - asked for a pipe above
    log = ProxyLog()
    follower = asyncio.create_task(log.follow(process.stderr))
    print(f"gateway simulator {gateway_url}, proxy {proxy_url} (pid {process.pid})", flush=True)
    exit_status: int | None = None
    try:
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=args.concurrency * 2)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            await wait_ready(http, proxy_url, process)
            load = Load(proxy_url, http, random.Random(args.seed))  # noqa: S311 - a load mix
            started = time.monotonic()
            revoker = asyncio.create_task(revoke(state.faults, args.revoke_every))
            try:
                finished = await run_load(
                    load, args.requests, args.concurrency, args.rate, started + args.max_seconds
                )
            finally:
                revoker.cancel()
            elapsed = time.monotonic() - started
        process.send_signal(signal.SIGTERM)
        try:
            exit_status = await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
        await follower
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await runner.cleanup()

    issued = state.tokens.issued  # type: ignore[attr-defined]
    rotations = max(0, len(issued) - 1)
    proxy_text = "\n".join(log.text)
    leaked = DEMO_CLIENT_SECRET in proxy_text or any(t in proxy_text for t in issued)
    done = len(load.latencies)
    errors = sum(load.errors.values())

    print(
        f"\nrequests: {done} in {elapsed:.1f} s ({done / elapsed:.0f}/s), "
        f"{args.concurrency} at a time"
    )
    if not finished:
        print(f"  stopped by --max-seconds {args.max_seconds:g} before {args.requests}")
    print("  mix: " + ", ".join(f"{k} {v}" for k, v in sorted(load.kinds.items())))
    print(f"  bytes through the proxy: {load.bytes_through / MiB:.0f} MiB")
    print(
        "  latency: "
        f"p50 {percentile(load.latencies, 50) * 1000:.1f} ms, "
        f"p99 {percentile(load.latencies, 99) * 1000:.1f} ms, "
        f"max {max(load.latencies, default=0) * 1000:.0f} ms"
    )
    print(f"client-visible errors: {errors}")
    for kind, count in load.errors.most_common():
        print(f"  {kind}: {count}   e.g. {load.examples[kind]}")
    per_rotation = (state.token_requests - 1) / rotations if rotations else float("nan")
    # Rotations include the refreshes revocations force.
    print(
        f"token rotations: {rotations} ({len(issued)} tokens issued, "
        f"{state.token_requests} token requests, {per_rotation:.2f} per rotation; "
        f"the proxy logged {log.refreshed} refreshes)"
    )
    revocations = state.faults.token_generation
    print(
        f"revocations: {revocations}; gateway 401s (replayed by the proxy): {counts.unauthorized}"
    )
    print(f"proxy exit status after SIGTERM: {exit_status}; log lines: {log.lines}")
    print(f"proxy warnings and errors: {len(log.problems)}")
    for line in log.problems[:10]:
        print(f"  {line}")
    print(f"secret or token in the proxy's log: {'YES' if leaked else 'no'}")
    return 0 if errors == 0 and exit_status == 0 and not leaked else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000, help="default 20000")
    parser.add_argument("--concurrency", type=int, default=32, help="default 32")
    parser.add_argument(
        "--max-seconds", type=float, default=300, help="stop after this long (default 300)"
    )
    parser.add_argument(
        "--token-lifetime", type=int, default=4, help="seconds, at least 2 (default 4)"
    )
    parser.add_argument(
        "--rate", type=float, default=500, help="requests per second, 0 for no limit (default 500)"
    )
    parser.add_argument(
        "--revoke-every", type=float, default=0, metavar="SECONDS", help="default 0: never"
    )
    parser.add_argument("--seed", type=int, default=1, help="for the request mix (default 1)")
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1 or args.max_seconds <= 0:
        parser.error("--requests, --concurrency and --max-seconds must be positive")
    if args.rate < 0 or args.revoke_every < 0:
        parser.error("--rate and --revoke-every must not be negative")
    if args.token_lifetime < 2:
        parser.error("--token-lifetime must be at least 2 seconds")
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
