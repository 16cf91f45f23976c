"""Where a proxy's CPU goes under small GETs: py-spy samples, as microseconds per request.

    pip install py-spy                       # once; the harness installs nothing itself
    python -m benchmarks.profile             # ours, 50 connections, 20 s
    python -m benchmarks.profile --variant minimal --proxy-rev HEAD --top 25

The variant runs pinned to the proxy core as in the harness; wrk and py-spy run on the load
core. py-spy samples the whole process (``record --format raw``, blocking, so stacks are
whole); each function's share of samples times the proxy's CPU seconds over the requests
served gives its cost per request, self (its own code and the C calls it makes) and
inclusive (with its callees).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import workloads
from .lab import Lab, LabSettings, which
from .procs import cpu_seconds
from .run import _export

__all__ = ["hotspots", "main"]

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short(frame: str) -> str:
    """``func (aiohttp/client.py)`` from py-spy's ``func (/long/path/aiohttp/client.py:12)``."""
    match = _FRAME.match(frame)
    if not match:
        return frame
    parts = match["file"].split("/")
    return f"{match['func']} ({'/'.join(parts[-2:])})"


def hotspots(raw: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Total samples, and samples per function: self (leaf) and inclusive (anywhere)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [_short(frame) for frame in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    return total, own, inclusive


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--variant", default="ours", choices=("ours", "minimal"))
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--proxy-rev", metavar="REV", help="as in python -m benchmarks")
    parser.add_argument("--proxy-path", type=Path, metavar="DIR")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks here")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None or which("nginx") is None or which("wrk") is None:
        print("needs py-spy (pip install py-spy), nginx and wrk", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0))
    proxy_core, load_core = (cpus[0], cpus[1]) if len(cpus) > 1 else (None, None)
    if load_core is not None:
        os.sched_setaffinity(0, {load_core})
    run_dir = Path(tempfile.mkdtemp(prefix="iap-profile-"))
    try:
        proxy_path = _export(args.proxy_rev, run_dir / "src") if args.proxy_rev else None
        proxy_path = proxy_path or args.proxy_path
        lua = run_dir / "report.lua"
        lua.write_text(workloads.WRK_LUA, encoding="utf-8")
        raw_path = args.raw or run_dir / "stacks.txt"
        settings = LabSettings(
            run_dir, proxy_core, load_core, which("nginx") or "nginx", 1 << 20, proxy_path
        )
        with Lab(settings) as lab:
            lab.start_upstreams()
            with lab.variant(args.variant, lab.static_url) as endpoint:
                assert endpoint.proc is not None
                url = endpoint.url + "/small.json"
                workloads._wrk(which("wrk") or "wrk", lua, url, args.connections, 2)
                spy_argv = [py_spy, "record", "--pid", str(endpoint.proc.pid)]
                spy_argv += ["--rate", str(args.rate), "--format", "raw", "-o", str(raw_path)]
                spy = subprocess.Popen(
                    [*spy_argv, "--duration", str(args.seconds)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                cpu_before = cpu_seconds(endpoint.pids)
                result = workloads._wrk(
                    which("wrk") or "wrk", lua, url, args.connections, args.seconds
                )
                cpu = cpu_seconds(endpoint.pids) - cpu_before
                spy.wait(timeout=args.seconds + 60)
        total, own, inclusive = hotspots(raw_path.read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    requests = result["requests"]
    per_sample = cpu / total / requests * 1e6 if total and requests else 0.0
    print(
        f"{args.variant}: {requests} requests in {args.seconds} s, {cpu:.2f} CPU s, "
        f"{cpu / requests * 1e6:.1f} µs/request; {total} samples (profiling slows it)"
    )
    for title, counter in (("self", own), ("inclusive", inclusive)):
        print(f"\n{title}: share of samples, µs per request")
        for name, samples in counter.most_common(args.top):
            print(f"{100 * samples / total:5.1f} %  {samples * per_sample:6.1f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
