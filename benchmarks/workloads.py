"""The workloads: each measures one variant once and returns a flat record of figures.

- ``small_gets``: wrk, one thread, 1 or 50 connections, a ~200-byte JSON file;
- ``transfer``: curl, 512 MiB down or up, with ``Content-Length`` or chunked;
- ``slow``: 1,000 concurrent requests the upstream holds for 3 s (aiohttp client);
- ``refresh``: steady load on ours while its token is refreshed every 2 s.

The proxy's CPU comes from ``/proc/PID/stat`` (utime + stime) before and after; its peak
RSS from ``VmHWM`` after resetting it through ``clear_refs``, cross-checked by sampling.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from .lab import Endpoint
from .procs import (
    RssSampler,
    core_busy_seconds,
    cpu_seconds,
    listen_overflows,
    reset_peak_rss,
    rss_kib,
)

__all__ = ["WRK_LUA", "refresh", "slow", "small_gets", "transfer"]

MIB = 1024 * 1024

# wrk's summary as one JSON line: its own text output rounds latencies to 10 us.
WRK_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""

Record = dict[str, Any]


def _wrk(wrk: str, lua: Path, url: str, connections: int, seconds: float) -> Record:
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"]
    argv += ["-s", str(lua), url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            result: Record = json.loads(line[len("WRKJSON ") :])
            return result
    raise RuntimeError(f"wrk gave no summary: {done.stdout[-500:]} {done.stderr[-500:]}")


def small_gets(
    endpoint: Endpoint,
    wrk: str,
    lua: Path,
    connections: int,
    seconds: float,
    warmup: float,
    retries: int = 2,
    disturbed: float = 0.05,
) -> Record:
    """Requests/s, p50/p99 and the proxy's CPU per request for GET /small.json.

    On a shared machine other processes sometimes take the proxy's core: a measurement
    during which they took more than ``disturbed`` CPU-seconds per second is taken again,
    up to ``retries`` times, and the least disturbed one is kept.
    """
    url = endpoint.url + "/small.json"
    _wrk(wrk, lua, url, connections, warmup)
    best: Record | None = None
    for attempt in range(retries + 1):
        record = _small_gets_once(endpoint, wrk, lua, url, connections, seconds)
        record["attempts"] = attempt + 1
        if best is None or record.get("foreign_load", 0) < best.get("foreign_load", 0):
            best = record
        if best.get("foreign_load", 0) <= disturbed:
            break
    assert best is not None
    return best


def _small_gets_once(
    endpoint: Endpoint, wrk: str, lua: Path, url: str, connections: int, seconds: float
) -> Record:
    cpu_before = cpu_seconds(endpoint.pids)
    busy_before = core_busy_seconds(endpoint.core)
    result = _wrk(wrk, lua, url, connections, seconds)
    cpu = cpu_seconds(endpoint.pids) - cpu_before
    busy = core_busy_seconds(endpoint.core) - busy_before
    requests = result["requests"]
    errors = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    record: Record = {
        "requests": requests,
        "errors": errors,
        "rps": requests / (result["duration_us"] / 1e6),
        "p50_ms": result["p50_us"] / 1000,
        "p90_ms": result["p90_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "max_ms": result["max_us"] / 1000,
    }
    if endpoint.pids:
        record["proxy_cpu_s"] = cpu
        record["cpu_us_per_request"] = cpu / requests * 1e6 if requests else None
        record["requests_per_cpu_s"] = requests / cpu if cpu > 0 else None
        record["proxy_rss_mib"] = rss_kib(endpoint.pids) / 1024
        # Others on the proxy's core (a busy shared machine): CPU s per wrk second.
        record["foreign_load"] = max(0.0, busy - cpu) / (result["duration_us"] / 1e6)
    return record


def _curl(argv: list[str], kind: str, size: int) -> tuple[bool, int, float, str]:
    """Run one curl transfer: (ok, bytes moved, seconds, error text)."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    *body, summary = done.stdout.rstrip("\n").split("\n")
    try:
        status, down, seconds = summary.split()
        if kind.startswith("upload"):
            # What the sink read: curl's own count includes the chunked framing.
            moved = int(json.loads("\n".join(body) or "{}").get("received", 0))
        else:
            moved = int(float(down))
    except ValueError:
        return False, 0, 0.0, (done.stderr or done.stdout)[-300:]
    ok = status == "200" and moved == size
    return ok, moved, float(seconds), "" if ok else (done.stderr or done.stdout)[-300:]


def transfer(endpoint: Endpoint, kind: str, big_path: Path, size: int, repeats: int) -> Record:
    """``repeats`` transfers of ``size`` bytes with curl, the median speed and the peak RSS.

    ``kind``: ``download`` (nginx's file, Content-Length), ``download-chunked`` (the sink),
    ``upload`` (Content-Length) or ``upload-chunked``.
    """
    argv = ["curl", "-sS", "--noproxy", "*", "-H", "Expect:"]
    argv += ["-w", "\n%{http_code} %{size_download} %{time_total}"]
    if kind == "download":
        argv += ["-o", "/dev/null", endpoint.url + "/big.bin"]
    elif kind == "download-chunked":
        argv += ["-o", "/dev/null", f"{endpoint.url}/stream?bytes={size}"]
    elif kind in ("upload", "upload-chunked"):
        argv += ["-T", str(big_path), endpoint.url + "/upload"]
        if kind == "upload-chunked":
            argv += ["-H", "Transfer-Encoding: chunked"]
    else:
        raise ValueError(kind)
    pids = endpoint.pids
    rss_before = rss_kib(pids)
    exact_peak = reset_peak_rss(pids)
    cpu_before = cpu_seconds(pids)
    speeds, errors = [], []
    with RssSampler(pids) as sampler:
        for _ in range(repeats):
            ok, moved, seconds, error = _curl(argv, kind, size)
            if ok and seconds > 0:
                speeds.append(moved / MIB / seconds)
            else:
                errors.append(error)
    cpu = cpu_seconds(pids) - cpu_before
    peak = max(sampler.peak_kib, rss_kib(pids, "VmHWM") if exact_peak else 0)
    record: Record = {
        "ok": not errors,
        "repeats": repeats,
        "mib_per_s": statistics.median(speeds) if speeds else None,
        "best_mib_per_s": max(speeds, default=None),
        "mib_per_s_each": speeds,
    }
    if pids:
        record["proxy_cpu_s"] = cpu / repeats
        record["rss_before_mib"] = rss_before / 1024
        record["rss_peak_mib"] = peak / 1024
        record["rss_growth_mib"] = (peak - rss_before) / 1024
    if errors:
        record["error"] = errors[0]
    return record


async def _slow_clients(url: str, count: int, limit_s: float) -> list[tuple[Any, float]]:
    connector = aiohttp.TCPConnector(limit=0)
    client_timeout = aiohttp.ClientTimeout(total=limit_s)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

        async def one() -> tuple[Any, float]:
            started = time.monotonic()
            try:
                async with session.get(url) as response:
                    await response.read()
                    return response.status, time.monotonic() - started
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                return type(exc).__name__, time.monotonic() - started

        return await asyncio.gather(*(one() for _ in range(count)))


def slow(endpoint: Endpoint, count: int, hold_ms: int) -> Record:
    """``count`` concurrent requests that the upstream holds ``hold_ms`` each."""
    pids = endpoint.pids
    rss_before = rss_kib(pids)
    exact_peak = reset_peak_rss(pids)
    cpu_before = cpu_seconds(pids)
    overflows_before = listen_overflows()
    started = time.monotonic()
    with RssSampler(pids, interval=0.05) as sampler:
        outcomes = asyncio.run(
            _slow_clients(f"{endpoint.url}/slow?ms={hold_ms}", count, hold_ms / 1000 + 60)
        )
    wall = time.monotonic() - started
    cpu = cpu_seconds(pids) - cpu_before
    peak = max(sampler.peak_kib, rss_kib(pids, "VmHWM") if exact_peak else 0)
    errors: dict[str, int] = {}
    for outcome, _ in outcomes:
        if outcome != 200:
            errors[str(outcome)] = errors.get(str(outcome), 0) + 1
    latencies = sorted(seconds for _, seconds in outcomes)
    record: Record = {
        "requests": count,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "wall_s": wall,
        "p50_s": statistics.median(latencies),
        "max_s": latencies[-1],
        "listen_overflows": listen_overflows() - overflows_before,
    }
    if pids:
        record["proxy_cpu_s"] = cpu
        record["rss_before_mib"] = rss_before / 1024
        record["rss_peak_mib"] = peak / 1024
        record["rss_growth_mib"] = (peak - rss_before) / 1024
    return record


# ------------------------------------------------------------------ the token refresh

_REFRESHED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*token refreshed: .*\(took ([\d.]+) s\)"
)


def refresh_windows(log_text: str) -> list[tuple[float, float]]:
    """(start, end) wall-clock seconds of each refresh, from ours's "token refreshed" lines."""
    windows = []
    for line in log_text.splitlines():
        match = _REFRESHED.match(line)
        if match:
            logged = time.mktime(time.strptime(match[1], "%Y-%m-%d %H:%M:%S"))
            end = logged + int(match[2]) / 1000
            windows.append((end - float(match[3]), end))
    return windows


async def _timed_load(
    url: str, concurrency: int, seconds: float
) -> list[tuple[float, float, int | str]]:
    """(wall-clock start, latency, status) of every request of a closed-loop load."""
    samples: list[tuple[float, float, int | str]] = []
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while time.monotonic() < deadline:
                wall, started = time.time(), time.perf_counter()
                status: int | str
                try:
                    async with session.get(url) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    status = type(exc).__name__
                samples.append((wall, time.perf_counter() - started, status))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


def _token_requests(stats_url: str) -> int:
    async def fetch() -> int:
        async with aiohttp.ClientSession() as session, session.get(stats_url) as response:
            return int((await response.json())["token_requests"])

    return asyncio.run(fetch())


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def refresh(
    endpoint: Endpoint, stats_url: str, concurrency: int, seconds: float, around: float = 0.2
) -> Record:
    """Token requests per refresh, and latency of requests in flight during one or not.

    A request counts as "during a refresh" when it overlaps the refresh (from the token
    request's start to its end, as ours logs it) widened by ``around`` seconds after it.
    """
    assert endpoint.proc is not None
    log_offset = endpoint.proc.log_path.stat().st_size
    before = _token_requests(stats_url)
    load_started = time.time()
    samples = asyncio.run(_timed_load(endpoint.url + "/small.json", concurrency, seconds))
    load_ended = time.time()
    after = _token_requests(stats_url)
    with endpoint.proc.log_path.open("rb") as log:
        log.seek(log_offset)
        new_log = log.read().decode("utf-8", errors="replace")
    # Counted over the same span as the token requests; timed only inside the load.
    all_windows = refresh_windows(new_log)
    failed = new_log.count("token refresh failed")
    windows = [(s, e) for s, e in all_windows if load_started <= s and e <= load_ended]
    during, outside = [], []
    for wall, latency, _ in samples:
        overlaps = any(wall < end + around and wall + latency > start for start, end in windows)
        (during if overlaps else outside).append(latency * 1000)
    token_requests = after - before
    return {
        "requests": len(samples),
        "errors": sum(1 for _, _, status in samples if status != 200),
        "rps": len(samples) / seconds,
        "refreshes": len(all_windows),
        "refreshes_failed": failed,
        "token_requests": token_requests,
        "token_requests_per_refresh": (
            token_requests / (len(all_windows) + failed) if all_windows or failed else None
        ),
        "refresh_took_ms_max": max(((e - s) * 1000 for s, e in windows), default=None),
        "during_n": len(during),
        "during_p50_ms": _percentile(during, 50),
        "during_p99_ms": _percentile(during, 99),
        "during_max_ms": max(during, default=None),
        "outside_n": len(outside),
        "outside_p50_ms": _percentile(outside, 50),
        "outside_p99_ms": _percentile(outside, 99),
        "outside_max_ms": max(outside, default=None),
    }
