"""The command line: argv -> configuration -> run. No logic of its own.

    instructure-auth-proxy [serve]   run the proxy (the default)
    instructure-auth-proxy simulate  run the gateway simulator on its own
    instructure-auth-proxy demo      the simulator and the proxy together, no credentials needed

Exit statuses: 0 clean shutdown, 2 invalid configuration or usage, 3 credentials rejected at
startup, 4 cannot listen.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import load_config
from .errors import ConfigError
from .logs import configure_logging

__all__ = ["main"]

EXIT_CONFIG = 2
COMMANDS = ("serve", "simulate", "demo")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructure-auth-proxy",
        description="A local authenticating reverse proxy for Instructure's API gateway.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the proxy (the default)",
        description="Run the proxy. Credentials come from DAP_CLIENT_ID and DAP_CLIENT_SECRET "
        "(or DAP_CLIENT_SECRET_FILE), or the config file.",
    )
    serve.add_argument("--config", type=Path, metavar="FILE", help="YAML configuration file")
    serve.add_argument("--listen", metavar="HOST:PORT", help="default 127.0.0.1:8080")
    serve.add_argument("--upstream", metavar="URL", help="the gateway's base URL")
    serve.add_argument("--token-url", metavar="URL", help="default: the upstream's /ids/auth/login")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))

    simulate = commands.add_parser(
        "simulate", help="run the gateway simulator on its own, for offline development"
    )
    simulate.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:9000")
    simulate.add_argument(
        "--token-lifetime", type=int, default=3599, metavar="SECONDS", help="default 3599"
    )
    simulate.add_argument("--no-rate-limits", action="store_true")
    simulate.add_argument("--log-level", choices=("debug", "info", "warning", "error"))

    demo = commands.add_parser(
        "demo", help="run the simulator and the proxy together: no credentials needed"
    )
    demo.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8080")
    demo.add_argument("--simulator-listen", metavar="HOST:PORT", default="127.0.0.1:0")
    demo.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    return parser


def _with_default_command(argv: Sequence[str]) -> list[str]:
    """A bare ``instructure-auth-proxy [flags]`` means ``serve [flags]``."""
    args = list(argv)
    if not any(arg in COMMANDS for arg in args) and not {"-h", "--help", "--version"} & set(args):
        return ["serve", *args]
    return args


def _run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (the ``fast`` extra, and the container): it is
    measurably quicker per request; asyncio's own loop otherwise."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(_with_default_command(sys.argv[1:] if argv is None else argv))
    if args.command == "simulate":
        from .demo import simulate

        configure_logging(args.log_level or "info")
        return _run(simulate(args.listen, args.token_lifetime, not args.no_rate_limits))
    if args.command == "demo":
        from .demo import demo

        configure_logging(args.log_level or "info")
        return _run(demo(args.listen, args.simulator_listen))
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

    environ = dict(os.environ)
    path = args.config or (
        Path(environ["DAP_PROXY_CONFIG"]) if environ.get("DAP_PROXY_CONFIG") else None
    )
    flags = {
        "listen": args.listen,
        "upstream": args.upstream,
        "token_url": args.token_url,
        "log_level": args.log_level,
    }
    try:
        config = load_config(path, environ, flags)
    except ConfigError as exc:
        print(f"instructure-auth-proxy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_level)
    logging.getLogger("proxy").debug("configuration: %r", config)
    return _run(serve(config))
