"""Small changes weighed: variants kept running side by side, measured in paired rounds.

    python -m benchmarks.paired --candidate new=DIR                 # ours (HEAD) against DIR
    python -m benchmarks.paired --rev 33da7e3 --candidate new=DIR --variants minimal
    python -m benchmarks.paired --connections 50 --rounds 12

``python -m benchmarks`` starts every proxy afresh for each measurement, which is right for
a figure a user would see but lets differences of a few per cent drown in the noise
between runs (hash seeds, memory layout, where a fresh process lands). Here each variant is
started once and kept; every round measures each in turn (the order rotates), with the
harness's own small-GET measurement (wrk, proxy CPU per request from /proc), and each
round's ratio to the first variant is taken in that round. The median of those ratios is
the figure; its range says how far to trust it. Needs nginx and wrk, as the harness does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from . import workloads
from .lab import Lab, LabSettings, which
from .run import _cores, _export

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--variants", default="", help="also minimal and/or nginx, comma-separated")
    parser.add_argument("--rev", help="ours is the proxy package at this git revision")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=2)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    candidates = {}
    for spec in args.candidate:
        name, _, directory = spec.partition("=")
        if not (Path(directory) / "proxy").is_dir():
            print(f"--candidate {spec}: expected NAME=DIR with DIR/proxy/ in it")
            return 2
        candidates[name] = Path(directory).resolve()
    wrk = which("wrk")
    if wrk is None or which("nginx") is None:
        print("needs wrk and nginx: sudo apt-get install -y nginx wrk")
        return 2
    proxy_core, load_core = _cores()
    if load_core is not None:
        os.sched_setaffinity(0, {load_core})
    run_dir = Path(tempfile.mkdtemp(prefix="iap-paired-"))
    try:
        proxy_path = _export(args.rev, run_dir / "proxy-rev") if args.rev else None
        lua = run_dir / "report.lua"
        lua.write_text(workloads.WRK_LUA, encoding="utf-8")
        settings = LabSettings(
            run_dir=run_dir,
            proxy_core=proxy_core,
            load_core=load_core,
            nginx=which("nginx") or "nginx",
            big_bytes=1024,
            proxy_path=proxy_path,
            candidates=candidates,
        )
        names = ["ours", *(f"ours-{n}" for n in candidates)]
        names += [v for v in args.variants.split(",") if v in ("minimal", "nginx")]
        with Lab(settings) as lab, contextlib.ExitStack() as running:
            lab.start_upstreams()
            endpoints = {n: running.enter_context(lab.variant(n, lab.static_url)) for n in names}
            cost: dict[str, list[float]] = {n: [] for n in names}
            for rnd in range(args.rounds):
                for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
                    record = workloads.small_gets(
                        endpoints[name], wrk, lua, args.connections, args.seconds, warmup=1
                    )
                    cost[name].append(record["cpu_us_per_request"])
        base = names[0]
        print(f"proxy CPU per small GET at {args.connections} connection(s), {args.rounds} rounds")
        for name in names:
            ratios = [b / x for b, x in zip(cost[base], cost[name], strict=True)]
            print(
                f"  {name:14s} {statistics.median(cost[name]):7.1f} us  "
                f"{base}/{name} per round: {statistics.median(ratios):.3f} "
                f"[{min(ratios):.3f}, {max(ratios):.3f}]"
            )
        return 0
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
