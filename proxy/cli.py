"""The command line: argv -> configuration -> run. No logic of its own.

    instructure-auth-proxy [serve]   run the proxy (the default)
    instructure-auth-proxy token     print a valid gateway token, for scripts
    instructure-auth-proxy simulate  run the gateway simulator on its own
    instructure-auth-proxy demo      the simulator and the proxy together, no credentials needed

Exit statuses (exit_status.py): 0 clean shutdown, 2 invalid configuration or usage,
3 credentials rejected at startup, 4 cannot listen (``token``: 1 when the token endpoint
stays unavailable).

Each command imports what it uses, when it runs: ``token`` never loads the server, and
``serve`` never loads the gateway simulator.
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

from . import __version__, exit_status
from .config import load_config
from .errors import ConfigError
from .logs import configure_logging

__all__ = ["main"]

COMMANDS = ("serve", "token", "simulate", "demo")
# The token command's warning, also in token_command.py's docstring.
PRINT_CAUTION = (
    "Prints a live gateway access token on stdout. Whatever captures that output (terminal "
    "scrollback, CI logs, a file, a process listing of a pipeline) holds a credential for the "
    "institution's data until it expires, about an hour. Prefer pointing tools at the proxy, "
    "which keeps the token to itself."
)


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
    _config_flags(serve)
    serve.add_argument("--listen", metavar="HOST:PORT", help="default 127.0.0.1:8080")

    token = commands.add_parser(
        "token",
        help="print a valid gateway access token (read the warning in --help)",
        description=f"{PRINT_CAUTION} Exit status: 0 printed, 2 invalid configuration, "
        "3 credentials rejected, 1 token endpoint unavailable.",
    )
    _config_flags(token)
    token.add_argument("--profile", default="default", help="the credential set (default: default)")

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


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="YAML configuration file")
    parser.add_argument("--upstream", metavar="URL", help="the gateway's base URL")
    parser.add_argument(
        "--token-url", metavar="URL", help="default: the upstream's /ids/auth/login"
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--log-format", choices=("text", "json"))


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

    environ = dict(os.environ)
    path = args.config or (
        Path(environ["DAP_PROXY_CONFIG"]) if environ.get("DAP_PROXY_CONFIG") else None
    )
    flags = {
        "listen": getattr(args, "listen", None),
        "upstream": args.upstream,
        "token_url": args.token_url,
        "log_level": args.log_level,
        "log_format": args.log_format,
    }
    try:
        config = load_config(path, environ, flags)
    except ConfigError as exc:
        print(f"instructure-auth-proxy: {exc}", file=sys.stderr)
        return exit_status.CONFIG
    configure_logging(config.log_level, config.log_format)
    logging.getLogger("proxy").debug("configuration: %r", config)
    if args.command == "token":
        from .token_command import print_token

        return _run(print_token(config, args.profile))
    from .server import serve

    return _run(serve(config, load=lambda: load_config(path, environ, flags)))
