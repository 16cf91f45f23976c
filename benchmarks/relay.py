"""The object relay (issue 13) beside nginx proxying the same file, on loopback.

    python -m benchmarks.relay [--size-mib 512] [--rounds 3] [--loops asyncio,uvloop]

What runs (every process in its own session, all stopped at the end):

* ``storage``: nginx serving a ``--size-mib`` file (sendfile on), as object storage would,
  and passing ``/ids/`` and ``/dap/`` on to the fake gateway (``proxy_pass``, keep-alive:
  benchmarks/nginx.py ``storage_conf``); on the load core. The proxy's upstream
  (``DAP_PROXY_UPSTREAM``) is this nginx: the relay fetches plain ``http://`` loopback URLs
  only on its upstream's own scheme, host and port (proxy/sharing/relay_targets.py), as when
  a gateway serves objects from its own origin (the simulator does). So the API calls cross
  one extra nginx hop, outside what is measured, and the download stays nginx sendfile ->
  proxy -> curl.
* ``gateway``: a fake DAP gateway (this module, ``--fake-gateway``), reached through
  ``storage``: ``POST /ids/auth/login`` answers a JWT-shaped token, ``POST /dap/object/url``
  a pre-signed-looking URL of the storage file on that same origin (``X-Amz-Expires=900``
  from ``X-Amz-Date`` = now); on the load core.
* ``nginx-proxy``: nginx ``proxy_pass``-ing to storage, nginx's defaults otherwise
  (``proxy_buffering on``), upstream keep-alive; pinned to the proxy core. The reference.
* ``nginx-unbuffered``: the harness's nginx reference (benchmarks/nginx.py ``proxy_conf``:
  ``proxy_buffering off``, 64 KiB buffers), a second, stricter reference; same core.
* ``ours-<loop>``: ``python -m proxy serve`` with ``DAP_PROXY_OBJECT_RELAY=true`` in front of
  ``storage`` (so of the fake gateway too), one per event loop asked for (asyncio's own loop
  is forced by hiding uvloop from the process); pinned to the proxy core.

Each round downloads the file with curl (on the load core) once directly from storage, once
through nginx and once through the relay per loop, in an order that rotates every round;
each relay download uses a fresh relay URL (``POST /dap/object/url`` through the proxy).
Per download: curl's ``speed_download``, the proxy's CPU seconds and its RSS right before
and at its peak during the download (``VmHWM`` reset with ``clear_refs`` 5, cross-checked by
sampling ``VmRSS`` every 50 ms). A first untimed download per variant warms the page cache
and the processes; its RSS growth (from the idle, just-ready process) is kept too.

Results: a table on stdout and ``benchmarks/results/relay-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import nginx
from .lab import which
from .procs import (
    Proc,
    Processes,
    RssSampler,
    core_busy_seconds,
    cpu_seconds,
    free_port,
    process_tree,
    reset_peak_rss,
    rss_kib,
    wait_for_port,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1024 * 1024
OBJECT_ID = "job-1/part-00000.bin"
# The fake gateway's paths, which storage's nginx passes to it (benchmarks/nginx.py).
_GATEWAY_PATHS = ("/ids/", "/dap/")
# ``python -m proxy`` with uvloop hidden from the process, so the CLI falls back to asyncio's
# own loop. Through runpy, whatever module the CLI lives in (a --proxy-path of another age).
_ASYNCIO_ONLY = (
    "import runpy, sys; sys.modules['uvloop'] = None; "
    "runpy.run_module('proxy', run_name='__main__', alter_sys=True)"
)


# --------------------------------------------------------------------------- fake gateway


def _jwt(lifetime: int) -> str:
    def part(document: dict[str, Any]) -> str:
        raw = json.dumps(document, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"sub": "bench", "iat": now, "exp": now + lifetime, "scope": "s"}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def fake_gateway(listen: str, storage_url: str) -> None:
    """Serve the two gateway endpoints the relay needs, until SIGTERM."""
    from aiohttp import web

    async def login(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {
                "access_token": _jwt(3599),
                "expires_in": 3599,
                "scope": "s",
                "token_type": "bearer",
            }
        )

    async def object_url(request: web.Request) -> web.Response:
        await request.read()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        url = f"{storage_url}?X-Amz-Expires=900&X-Amz-Date={stamp}&X-Amz-Signature=abc123"
        return web.json_response({"urls": {OBJECT_ID: {"url": url}}})

    app = web.Application()
    app.router.add_post("/ids/auth/login", login)
    app.router.add_post("/dap/object/url", object_url)
    host, _, port = listen.rpartition(":")
    web.run_app(app, host=host, port=int(port), access_log=None, print=None)


# --------------------------------------------------------------------------- the bench


def _proxy_conf(prefix: Path, port: int, upstream_port: int) -> str:
    """nginx as a plain reverse proxy: ``proxy_pass``, buffering as nginx's default (on)."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    upstream storage {{
        server 127.0.0.1:{upstream_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://storage;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def _write_object(path: Path, size: int) -> None:
    block = os.urandom(MIB)  # 1 MiB of random bytes, repeated
    with path.open("wb") as out:
        remaining = size
        while remaining > 0:
            out.write(block[: min(len(block), remaining)])
            remaining -= len(block)


def _python_env(extra: dict[str, str], proxy_path: Path | None) -> dict[str, str]:
    """The caller's environment without DAP_* settings; the product first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAP_")}
    paths = [str(proxy_path)] if proxy_path else []
    paths.append(str(REPO))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wait_ready(port: int, proc: Proc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
        with contextlib.suppress(OSError):
            if _request(port, "GET", "/-/ready")[0] == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not ready after {timeout:g} s:\n{proc.log_tail()}")


def _relay_url(port: int) -> str:
    """A fresh relay URL: the object-URL answer, as rewritten by the proxy."""
    body = json.dumps({"format": "tsv", "objects": [{"id": OBJECT_ID}]}).encode()
    status, answer = _request(port, "POST", "/dap/object/url", body)
    if status != 200:
        raise RuntimeError(f"POST /dap/object/url through the proxy: {status} {answer[:300]!r}")
    url = str(json.loads(answer)["urls"][OBJECT_ID]["url"])
    if "/-/relay/" not in url:
        raise RuntimeError(f"the proxy did not rewrite the object URL: {url}")
    return url


def _curl(url: str, size: int, core: int | None) -> float:
    """Download ``url`` to /dev/null; MiB/s as curl measured it."""
    argv = ["curl", "-sS", "--noproxy", "*", "-o", "/dev/null"]
    argv += ["-w", "%{http_code} %{size_download} %{speed_download}", url]
    if core is not None:
        argv = ["taskset", "-c", str(core), *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    fields = done.stdout.split()
    if done.returncode != 0 or len(fields) != 3 or fields[0] != "200" or int(fields[1]) != size:
        raise RuntimeError(f"curl {url}: rc {done.returncode} {done.stdout!r} {done.stderr!r}")
    return float(fields[2]) / MIB


class Variant:
    """One way to fetch the file: ``direct``, ``nginx-proxy`` or ``ours-<loop>``."""

    def __init__(self, name: str, port: int, pids: list[int], proc: Proc | None) -> None:
        self.name = name
        self.port = port
        self.pids = pids
        self.proc = proc
        self.rss_idle_kib = rss_kib(pids)
        self.first: dict[str, Any] = {}
        self.rounds: list[dict[str, Any]] = []

    @property
    def relay(self) -> bool:
        return self.name.startswith("ours")

    def url(self) -> str:
        if self.relay:
            return _relay_url(self.port)
        return f"http://127.0.0.1:{self.port}/big.bin"

    def download(self, size: int, load_core: int | None, proxy_core: int | None) -> dict[str, Any]:
        url = self.url()
        pids = self.pids
        before = rss_kib(pids)
        exact = reset_peak_rss(pids)
        cpu0, busy0 = cpu_seconds(pids), core_busy_seconds(proxy_core)
        with RssSampler(pids, interval=0.05) as sampler:
            speed = _curl(url, size, load_core)
        cpu = cpu_seconds(pids) - cpu0
        busy = core_busy_seconds(proxy_core) - busy0
        record: dict[str, Any] = {"mib_per_s": speed}
        if pids:
            peak = max(sampler.peak_kib, rss_kib(pids, "VmHWM") if exact else 0)
            record |= {
                "proxy_cpu_s": cpu,
                "other_cpu_on_proxy_core_s": max(0.0, busy - cpu),
                "rss_before_mib": before / 1024,
                "rss_peak_mib": peak / 1024,
                "rss_growth_mib": (peak - before) / 1024,
                "rss_growth_from_idle_mib": (peak - self.rss_idle_kib) / 1024,
                "peak_exact": exact,
            }
        return record


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _fmt(spread: dict[str, float], digits: int = 0) -> str:
    return f"{spread['median']:.{digits}f} [{spread['min']:.{digits}f}, {spread['max']:.{digits}f}]"


def _loop_of(proc: Proc) -> str:
    """The event loop the proxy says it runs on (its startup line)."""
    for line in proc.log_tail(60).splitlines():
        if " on uvloop" in line:
            return "uvloop"
        if " on asyncio" in line or "EventLoop" in line:
            return "asyncio"
    return "?"


@contextlib.contextmanager
def _bench(args: argparse.Namespace) -> Iterator[tuple[dict[str, Variant], Processes, Path]]:
    nginx_bin = which("nginx")
    if nginx_bin is None:
        raise SystemExit("nginx is not on PATH (nor in /usr/sbin)")
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        run_dir = Path(tmp)
        (run_dir / "logs").mkdir()
        www = run_dir / "www"
        www.mkdir()
        _write_object(www / "big.bin", args.size_mib * MIB)
        for path in (run_dir, www):
            path.chmod(0o755)
        with Processes(run_dir / "logs") as procs:
            load, core = args.load_core, args.proxy_core
            # One origin for the API and the object (the relay fetches http:// loopback
            # URLs only on its upstream's own origin): storage proxies the gateway's paths.
            storage_port = gateway_port = free_port()
            while gateway_port == storage_port:  # both bound only later
                gateway_port = free_port()
            origin = f"http://127.0.0.1:{storage_port}"
            argv = [sys.executable, "-m", "benchmarks.relay", "--fake-gateway"]
            argv += [f"127.0.0.1:{gateway_port}", "--storage-url", f"{origin}/big.bin"]
            env = _python_env({}, None)
            proc = procs.start("gateway", argv, core=load, env=env, cwd=run_dir)
            wait_for_port(gateway_port, proc)
            prefix = run_dir / "nginx-storage"
            conf = nginx.storage_conf(prefix, storage_port, www, gateway_port, _GATEWAY_PATHS)
            argv = nginx.start_argv(nginx_bin, prefix, conf)
            wait_for_port(storage_port, procs.start("storage", argv, core=load))

            variants = {"direct": Variant("direct", storage_port, [], None)}
            port = free_port()
            prefix = run_dir / "nginx-proxy"
            argv = nginx.start_argv(nginx_bin, prefix, _proxy_conf(prefix, port, storage_port))
            proc = procs.start("nginx-proxy", argv, core=core)
            wait_for_port(port, proc)
            time.sleep(0.3)  # the master forks its worker after it binds
            variants["nginx-proxy"] = Variant("nginx-proxy", port, process_tree(proc.pid), proc)
            # The harness's reference (benchmarks/nginx.py): buffering off, 64 KiB buffers.
            port = free_port()
            prefix = run_dir / "nginx-unbuffered"
            argv = nginx.start_argv(nginx_bin, prefix, nginx.proxy_conf(prefix, port, storage_port))
            proc = procs.start("nginx-unbuffered", argv, core=core)
            wait_for_port(port, proc)
            time.sleep(0.3)
            variants["nginx-unbuffered"] = Variant(
                "nginx-unbuffered", port, process_tree(proc.pid), proc
            )

            for loop in args.loops:
                port = free_port()
                env = _python_env(
                    {
                        "DAP_CLIENT_ID": "us-east-1#relay-bench",
                        "DAP_CLIENT_SECRET": "relay-bench-secret",
                        "DAP_PROXY_UPSTREAM": origin,
                        "DAP_PROXY_LISTEN": f"127.0.0.1:{port}",
                        "DAP_PROXY_OBJECT_RELAY": "true",
                    },
                    args.proxy_path,
                )
                if loop == "uvloop":
                    argv = [sys.executable, "-m", "proxy", "serve"]
                else:
                    argv = [sys.executable, "-c", _ASYNCIO_ONLY, "serve"]
                proc = procs.start(f"ours-{loop}", argv, core=core, env=env, cwd=run_dir)
                wait_for_port(port, proc)
                _wait_ready(port, proc)
                name = f"ours-{loop}"
                variants[name] = Variant(name, port, process_tree(proc.pid), proc)
            yield variants, procs, run_dir


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * MIB
    with _bench(args) as (variants, _procs, _run_dir):
        loops_seen = {name: _loop_of(v.proc) for name, v in variants.items() if v.relay and v.proc}
        for name, loop in loops_seen.items():
            if loop != name.removeprefix("ours-"):
                raise RuntimeError(f"{name} runs on {loop}: see its log")
        order = list(variants)
        for variant in variants.values():  # untimed: page cache, first buffers
            variant.first = variant.download(size, args.load_core, args.proxy_core)
        for round_no in range(args.rounds):
            shift = round_no % len(order)
            for name in order[shift:] + order[:shift]:
                record = variants[name].download(size, args.load_core, args.proxy_core)
                variants[name].rounds.append(record)
                print(f"round {round_no + 1} {name}: {record['mib_per_s']:.0f} MiB/s", flush=True)
        references = {
            ref: [r["mib_per_s"] for r in variants[ref].rounds]
            for ref in ("nginx-proxy", "nginx-unbuffered")
        }
        summary: dict[str, Any] = {}
        for name, variant in variants.items():
            speeds = [r["mib_per_s"] for r in variant.rounds]
            entry: dict[str, Any] = {"mib_per_s": _spread(speeds)}
            for ref, ref_speeds in references.items():
                ratios = [s / n for s, n in zip(speeds, ref_speeds, strict=True)]
                entry[f"ratio_to_{ref.replace('-', '_')}"] = _spread(ratios)
            if variant.pids:
                for key in ("rss_growth_mib", "rss_growth_from_idle_mib", "proxy_cpu_s"):
                    entry[key] = _spread([r[key] for r in variant.rounds])
                entry["rss_idle_mib"] = variant.rss_idle_kib / 1024
                entry["first_download"] = variant.first
            entry["rounds"] = variant.rounds
            summary[name] = entry
    return {
        "benchmark": "relay",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "repo_commit": _commit(),
        # With --proxy-path the product measured is that directory's, whatever its commit.
        "proxy_path": str(args.proxy_path or REPO),
        "proxy_tree_dirty": _dirty() if args.proxy_path is None else None,
        "size_mib": args.size_mib,
        "rounds": args.rounds,
        "proxy_core": args.proxy_core,
        "load_core": args.load_core,
        "loops": loops_seen,
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg(), "uname": platform.uname()},
        "targets": {"ratio_to_nginx_proxy_min": 0.85, "rss_growth_mib_max": 16},
        "variants": summary,
    }


def _commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


def _dirty() -> bool:
    """Whether proxy/ has uncommitted changes (others' edits in progress, say)."""
    done = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "proxy"],
        capture_output=True,
        text=True,
        check=False,
    )
    return bool(done.stdout.strip())


def _table(result: dict[str, Any]) -> str:
    lines = [
        "| variant | MiB/s | ÷ nginx-proxy | ÷ nginx-unbuffered | RSS growth MiB"
        " | from idle MiB | proxy CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in result["variants"].items():
        cells = [
            name,
            _fmt(entry["mib_per_s"]),
            _fmt(entry["ratio_to_nginx_proxy"], 2),
            _fmt(entry["ratio_to_nginx_unbuffered"], 2),
            _fmt(entry["rss_growth_mib"], 1) if "rss_growth_mib" in entry else "n/a",
            _fmt(entry["rss_growth_from_idle_mib"], 1) if "rss_growth_mib" in entry else "n/a",
            _fmt(entry["proxy_cpu_s"], 2) if "proxy_cpu_s" in entry else "n/a",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _uvloop_importable(proxy_path: Path | None) -> bool:
    done = subprocess.run(
        [sys.executable, "-c", "import uvloop"],
        env=_python_env({}, proxy_path),
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--loops",
        default=None,
        help="comma-separated: asyncio, uvloop (default: both when uvloop is importable)",
    )
    parser.add_argument("--proxy-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1 if (os.cpu_count() or 1) > 1 else 0)
    parser.add_argument("--proxy-path", type=Path, default=None, help="another proxy package")
    parser.add_argument("--fake-gateway", metavar="HOST:PORT", help=argparse.SUPPRESS)
    parser.add_argument("--storage-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake_gateway:
        fake_gateway(args.fake_gateway, args.storage_url)
        return
    if args.loops is None:
        args.loops = ["asyncio", "uvloop"] if _uvloop_importable(args.proxy_path) else ["asyncio"]
    else:
        args.loops = [loop.strip() for loop in args.loops.split(",") if loop.strip()]
    result = run(args)
    print()
    print(f"{args.size_mib} MiB, {args.rounds} rounds, median [min, max]; loops {result['loops']}")
    print(_table(result))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"relay-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nwritten: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
