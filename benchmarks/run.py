"""The command: ``python -m benchmarks [--quick] [--rounds N] ...``; ``--help`` lists all.

A round measures every workload on every variant, the variants in an order rotated each
round (direct nginx minimal ours, then nginx minimal ours direct, ...), so that drift of
the machine and order effects fall on all of them alike. Results go to
``benchmarks/results/<time>.json`` (every record) and ``.md`` (the tables), and the
Markdown to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp

from . import procs, report, workloads
from .lab import REPO, VARIANTS, Endpoint, Lab, LabSettings, which

__all__ = ["main"]

ALL_WORKLOADS = (
    "get-c1",
    "get-c50",
    "download",
    "download-chunked",
    "upload",
    "upload-chunked",
    "slow",
    "refresh",
)
STATIC_GROUP = ("get-c1", "get-c50", "download")  # against nginx serving files
SINK_GROUP = ("download-chunked", "upload", "upload-chunked")  # against the sink
SLOW_POOL_SIZE = 1000
INSTALL_HINT = "sudo apt-get update && sudo apt-get install -y nginx wrk curl"


def _port_range(value: str) -> tuple[int, int]:
    first, _, last = value.partition("-")
    try:
        ports = (int(first), int(last or first))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST-LAST, got {value!r}") from None
    if not 1024 <= ports[0] <= ports[1] <= 65535:
        raise argparse.ArgumentTypeError(f"expected 1024 <= FIRST <= LAST <= 65535, got {value!r}")
    return ports


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark the proxy against nginx and a minimal aiohttp proxy, side by "
        "side (BENCHMARKS.md says how and what it found). Needs nginx, wrk and curl: "
        + INSTALL_HINT,
    )
    parser.add_argument(
        "--ports",
        type=_port_range,
        metavar="FIRST-LAST",
        help="listen on 127.0.0.1 ports from this range only, e.g. 20000-20099 (default: "
        "free ports the OS picks); a run needs about 12",
    )
    parser.add_argument("--quick", action="store_true", help="two short rounds (~2 minutes)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; --quick: 2)")
    parser.add_argument("--seconds", type=float, help="per wrk run (default 5; --quick: 2)")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated subset of %(default)s"
    )
    parser.add_argument(
        "--workloads",
        default=",".join(ALL_WORKLOADS),
        help="comma-separated subset of %(default)s",
    )
    parser.add_argument("--big-mib", type=int, default=512, help="transfer size (512)")
    parser.add_argument(
        "--repeats", type=int, help="transfers per measurement; the median counts (5; quick 3)"
    )
    parser.add_argument("--slow-count", type=int, default=1000)
    parser.add_argument("--slow-ms", type=int, default=3000)
    parser.add_argument(
        "--refresh-seconds", type=float, help="load during the refresh test (12; quick 6)"
    )
    parser.add_argument(
        "--slow-default-pool",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the slow workload once on ours with its default pool_size "
        "(on by default in a full run)",
    )
    parser.add_argument(
        "--proxy-path",
        type=Path,
        metavar="DIR",
        help="benchmark the `proxy` package in DIR (a patched copy) instead of the repo's",
    )
    parser.add_argument(
        "--proxy-rev",
        metavar="REV",
        help="benchmark the `proxy` package as committed at REV (git archive), not the work "
        "tree: reproducible while others edit proxy/",
    )
    parser.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="add variant ours-NAME: the `proxy` package in DIR (a patched copy, with "
        "anything else it needs, such as uvloop, beside it), measured in the same rounds",
    )
    parser.add_argument(
        "--shared-state",
        action="store_true",
        help="add variant ours-redis: ours with shared_state, a redis-server on the load core "
        "(apt-get install redis-server), measured in the same rounds",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--label", default="", help="a word for the result file names")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    return parser


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _missing_tools() -> list[str]:
    return [tool for tool in ("nginx", "wrk", "curl") if which(tool) is None]


def _cores() -> tuple[int | None, int | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], cpus[1]


def _raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _output(argv: list[str]) -> str:
    """The first line ``argv`` prints (stdout or stderr), "" for none, "?" if it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "?"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def _machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} x {model}, Linux {platform.release()}"


def _export(rev: str, into: Path) -> Path:
    """``proxy/`` as committed at ``rev``, extracted under ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev, "proxy"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def _proxy_source(proxy_path: Path | None, rev: str | None) -> str:
    if rev is not None:
        return f"commit {_output(['git', '-C', str(REPO), 'rev-parse', '--short', rev])}"
    if proxy_path is not None:
        return f"copy at {proxy_path}"
    commit = _output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _output(["git", "-C", str(REPO), "status", "--porcelain", "--", "proxy"])
    return f"repo {commit}" + (" (proxy/ has uncommitted changes)" if dirty else "")


@contextlib.contextmanager
def _signals_stop_the_run() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every started process is stopped."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Runner:
    """One run: the lab, the options, and the records gathered so far."""

    def __init__(self, lab: Lab, args: argparse.Namespace, lua: Path) -> None:
        self.lab = lab
        self.args = args
        self.lua = lua
        self.wrk = which("wrk") or "wrk"
        self.records: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.refresh_stats = ""
        self.refresh_token_url = ""

    def _record(self, rnd: int, workload: str, variant: str, fields: dict[str, Any]) -> None:
        self.records.append({"round": rnd + 1, "workload": workload, "variant": variant, **fields})
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in fields.items()}
        _say(f"  {workload:<17} {variant:<12} {shown}")

    def _guarded(self, what: str, action: Callable[[], None]) -> None:
        try:
            action()
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
            # One failed measurement is reported, and the run goes on with the others.
            self.failures.append(f"{what}: {exc}")
            _say(f"  FAILED {what}: {exc}")

    def round(self, rnd: int, variants: list[str], wanted: set[str]) -> None:
        args, lab = self.args, self.lab
        order = variants[rnd % len(variants) :] + variants[: rnd % len(variants)]
        _say(f"round {rnd + 1}: {' '.join(order)}")
        static = [w for w in STATIC_GROUP if w in wanted]
        sink = [w for w in SINK_GROUP if w in wanted]
        for variant in order:
            if static:
                self._guarded(
                    f"round {rnd + 1} {variant} static",
                    lambda v=variant: self._group(rnd, v, lab.static_url, static),
                )
        for variant in order:
            if sink:
                self._guarded(
                    f"round {rnd + 1} {variant} sink",
                    lambda v=variant: self._group(rnd, v, lab.sink_url, sink),
                )
        if "slow" in wanted:
            for variant in order:
                self._guarded(
                    f"round {rnd + 1} {variant} slow",
                    lambda v=variant: self._slow(rnd, v, v, SLOW_POOL_SIZE),
                )
            if rnd == 0 and args.slow_default_pool and "ours" in variants:
                self._guarded(
                    "ours slow with the default pool",
                    lambda: self._slow(rnd, "ours", "ours-default-pool", None),
                )
        if "refresh" in wanted and "ours" in variants:
            self._guarded(f"round {rnd + 1} refresh", lambda: self._refresh(rnd))

    def _group(self, rnd: int, variant: str, upstream: str, names: list[str]) -> None:
        with self.lab.variant(variant, upstream) as endpoint:
            for name in names:
                self._one(rnd, name, endpoint)
            _check_alive(endpoint)

    def _one(self, rnd: int, name: str, endpoint: Endpoint) -> None:
        args = self.args
        if name.startswith("get-c"):
            fields = workloads.small_gets(
                endpoint, self.wrk, self.lua, int(name[5:]), args.seconds, warmup=1.0
            )
        else:
            size = args.big_mib * 2**20
            fields = workloads.transfer(endpoint, name, self.lab.big_path, size, args.repeats)
        self._record(rnd, name, endpoint.variant, fields)

    def _slow(self, rnd: int, variant: str, label: str, pool_size: int | None) -> None:
        with self.lab.variant(variant, self.lab.sink_url, pool_size=pool_size) as endpoint:
            fields = workloads.slow(endpoint, self.args.slow_count, self.args.slow_ms)
            fields["pool_size"] = pool_size if variant in ("minimal", "ours") else None
            self._record(rnd, "slow", label, fields)
            _check_alive(endpoint)

    def _refresh(self, rnd: int) -> None:
        if not self.refresh_stats:
            self.refresh_token_url, self.refresh_stats = self.lab.start_token_endpoint(4)
        with self.lab.variant(
            "ours", self.lab.static_url, token_url=self.refresh_token_url
        ) as endpoint:
            fields = workloads.refresh(
                endpoint, self.refresh_stats, concurrency=50, seconds=self.args.refresh_seconds
            )
            self._record(rnd, "refresh", "ours", fields)
            _check_alive(endpoint)


def _check_alive(endpoint: Endpoint) -> None:
    if endpoint.proc is not None and not endpoint.proc.alive():
        raise RuntimeError(f"{endpoint.variant} died:\n{endpoint.proc.log_tail()}")


def _meta(
    args: argparse.Namespace,
    argv: list[str],
    cores: tuple[Any, Any],
    candidates: dict[str, Path],
) -> dict[str, Any]:
    return {
        "command": shlex.join(["python", "-m", "benchmarks", *argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "rounds": args.rounds,
        "proxy_core": cores[0],
        "load_core": cores[1],
        "machine": _machine(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "event_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "nginx": _output([which("nginx") or "nginx", "-v"]),
        "wrk": " ".join(_output([which("wrk") or "wrk", "-v"]).split()[:2]),
        "proxy_source": _proxy_source(args.proxy_path, args.proxy_rev),
        "candidates": {name: str(path) for name, path in sorted(candidates.items())},
        "ours_config": "defaults (access log at info to a file via stderr); "
        f"slow workload: pool_size {SLOW_POOL_SIZE} for ours and minimal",
        "big_mib": args.big_mib,
        "wrk_seconds": args.seconds,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.ports is not None:
        procs.use_ports(*args.ports)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.seconds = args.seconds or (2.0 if args.quick else 5.0)
    args.refresh_seconds = args.refresh_seconds or (6.0 if args.quick else 12.0)
    args.repeats = args.repeats or (3 if args.quick else 5)
    if args.slow_default_pool is None:
        args.slow_default_pool = not args.quick
    variants = [v for v in args.variants.split(",") if v]
    candidates: dict[str, Path] = {}
    for spec in args.candidate:
        name, sep, directory = spec.partition("=")
        if not sep or not (Path(directory) / "proxy").is_dir():
            _say(f"--candidate {spec}: expected NAME=DIR with DIR/proxy/ in it")
            return 2
        candidates[name] = Path(directory).resolve()
        variants.append(f"ours-{name}")
    if args.shared_state:
        if which("redis-server") is None:
            _say("--shared-state: redis-server not found (apt-get install redis-server)")
            return 2
        variants.append("ours-redis")
    wanted = {w for w in args.workloads.split(",") if w}
    extra = {f"ours-{n}" for n in candidates} | ({"ours-redis"} if args.shared_state else set())
    unknown = (set(variants) - set(VARIANTS) - extra) | (wanted - set(ALL_WORKLOADS))
    if unknown:
        _say(f"unknown variants or workloads: {', '.join(sorted(unknown))}")
        return 2
    missing = _missing_tools()
    if missing:
        _say(f"missing: {', '.join(missing)}. Install them once with:\n  {INSTALL_HINT}")
        return 2

    cores = _cores()
    if cores[1] is None:
        _say("warning: fewer than 2 CPUs available: nothing is pinned, figures are mixed")
    else:
        os.sched_setaffinity(0, {cores[1]})  # the harness and its clients: the load core
    fd_limit = _raise_fd_limit()
    if fd_limit < 4 * args.slow_count:
        _say(f"warning: open-file limit {fd_limit} may be too low for the slow workload")

    run_dir = Path(tempfile.mkdtemp(prefix="iap-bench-"))
    if args.proxy_rev:
        try:
            args.proxy_path = _export(args.proxy_rev, run_dir / "proxy-rev")
        except (subprocess.CalledProcessError, tarfile.TarError) as exc:
            _say(f"cannot export proxy/ at {args.proxy_rev}: {exc}")
            shutil.rmtree(run_dir, ignore_errors=True)
            return 2
    lua = run_dir / "report.lua"
    lua.write_text(workloads.WRK_LUA, encoding="utf-8")
    meta = _meta(args, argv, cores, candidates)
    started = time.monotonic()
    runner: Runner | None = None
    try:
        with (
            _signals_stop_the_run(),
            Lab(
                LabSettings(
                    run_dir=run_dir,
                    proxy_core=cores[0],
                    load_core=cores[1],
                    nginx=which("nginx") or "nginx",
                    big_bytes=args.big_mib * 2**20,
                    proxy_path=args.proxy_path,
                    candidates=candidates,
                    shared_state=args.shared_state,
                )
            ) as lab,
        ):
            # The processes run in the run directory, not the repo, so that nothing but
            # PYTHONPATH decides which `proxy` package they import: say which it is.
            meta["ours_from"] = lab.proxy_origin()
            for name in candidates:
                meta[f"ours-{name}_from"] = lab.proxy_origin(name)
            _say(f"run directory {run_dir}; ours from {meta['ours_from']}; starting upstreams")
            lab.start_upstreams()
            runner = Runner(lab, args, lua)
            for rnd in range(args.rounds):
                runner.round(rnd, variants, wanted)
    except KeyboardInterrupt:
        _say("interrupted: every started process has been stopped")
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    meta["minutes"] = round((time.monotonic() - started) / 60, 1)
    report.add_derived(runner.records)
    results = {
        "meta": meta,
        "records": runner.records,
        "failures": runner.failures,
        "summary": report.summary(runner.records),
        "targets": report.targets(runner.records),
    }
    text = report.markdown(results)
    if runner.failures:
        text += "\n### Failures\n\n" + "\n".join(f"- {f}" for f in runner.failures) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%d-%H%M%S") + (f"-{args.label}" if args.label else "")
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (args.out / f"{stem}.md").write_text(text, encoding="utf-8")
    print(text)
    _say(f"{meta['minutes']} min; results in {args.out / stem}.json and .md")
    return 1 if runner.failures else 0
