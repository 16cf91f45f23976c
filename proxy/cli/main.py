"""The command line: argv -> configuration -> run. No logic of its own: the words (flags,
help, usage errors) are in args.py, the exit statuses in exit_status.py. Each command imports
what it uses, when it runs: ``token`` never loads the server, nor ``serve`` the simulator.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from .. import exit_status
from ..config import load_config
from ..errors import ConfigError
from ..observe.logs import configure_logging
from .args import listen_of, parse

__all__ = ["main"]


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
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.command in ("simulate", "demo"):
        try:
            from . import demo
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith("proxy.simulator"):
                raise
            print(
                f"instructure-auth-proxy: {args.command} needs the gateway simulator, which "
                "this installation leaves out (the container image does): run it from a "
                'clone of the repository, installed as the README\'s "Two commands" show: '
                "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
                f"instructure-auth-proxy {args.command}",
                file=sys.stderr,
            )
            return exit_status.CONFIG
        configure_logging(args.log_level or "info")
        if args.command == "simulate":
            listen = listen_of(args) or "127.0.0.1:9000"
            return _run(demo.simulate(listen, args.token_lifetime, not args.no_rate_limits))
        return _run(demo.demo(listen_of(args) or "127.0.0.1:8080", args.simulator_listen))

    environ = dict(os.environ)
    path = args.config or (
        Path(environ["DAP_PROXY_CONFIG"]) if environ.get("DAP_PROXY_CONFIG") else None
    )
    flags = {
        "listen": listen_of(args) if args.command == "serve" else None,
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
        from .token import print_token

        return _run(print_token(config, args.profile))
    from ..server.serve import serve

    return _run(serve(config, load=lambda: load_config(path, environ, flags)))
