"""The command line's words: subcommands, flags, help texts, usage errors.

Every ``--help`` lists the flags with their defaults, the environment variables the
command reads and its exit statuses; a mistyped command gets "did you mean".
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from pathlib import Path

from .. import __version__, exit_status
from ..config import DEFAULT_UPSTREAM
from ..config.sources import ENV_PREFIX, KEYS, did_you_mean
from ..config.values import LOOPBACK

__all__ = ["COMMANDS", "PRINT_CAUTION", "listen_of", "parse"]

COMMANDS = ("serve", "token", "simulate", "demo")
PRINT_CAUTION = (
    "Prints a live gateway access token on stdout. Whatever captures that output (terminal "
    "scrollback, CI logs, a file, a process listing of a pipeline) holds a credential for the "
    "institution's data until it expires, about an hour. Prefer pointing tools at the proxy, "
    "which keeps the token to itself."
)

LEVELS = ("debug", "info", "warning", "error")
_WIDTH = 88


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written (wrapped by hand: tables, lists); flag help
    wrapped at spaces only, so a URL (``https://api-gateway...``) is never cut at a hyphen
    and can be copied whole."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        words = " ".join(text.split())
        return textwrap.wrap(words, width, break_on_hyphens=False, break_long_words=False)


_FORMATTER = _Formatter

_CREDENTIALS_ENV = f"""\
environment (flags win over the environment, and the environment over the config file):
  DAP_CLIENT_ID           the gateway client id, from your institution
  DAP_CLIENT_SECRET       its secret; or:
  DAP_CLIENT_SECRET_FILE  a file holding the secret (a Docker or Kubernetes secret)
  DAP_PROXY_CONFIG        the YAML configuration file, as --config
  {ENV_PREFIX}<KEY>         any key of the configuration file (dots as underscores):
{{keys}}
  {ENV_PREFIX}PROFILE_<NAME>_<KEY>  a named profile's key (CLIENT_ID, CLIENT_SECRET_FILE,
                          UPSTREAM, TOKEN_URL, LOCAL_CLIENT_IDS)
  DAP_API_URL is not read: beside a tool it points at the proxy itself."""


def _environment() -> str:
    # DAP_PROXY_<KEY> of each key without aliases (the credentials are above).
    names = sorted(key.env_names[-1] for key in KEYS.values() if not key.aliases)
    keys = textwrap.fill(", ".join(names), _WIDTH, initial_indent="    ", subsequent_indent="    ")
    return _CREDENTIALS_ENV.format(keys=keys)


def _exit_statuses(*statuses: tuple[int, str]) -> str:
    return "exit statuses:\n" + "\n".join(f"  {code}  {what}" for code, what in statuses)


def _wrap(text: str) -> str:
    return textwrap.fill(text, _WIDTH, break_on_hyphens=False, break_long_words=False)


_USAGE_ERROR = (exit_status.CONFIG, "invalid configuration or usage")
_SERVE_EXITS = _exit_statuses(
    (exit_status.OK, "clean shutdown"),
    (exit_status.FAILED, "an unexpected failure"),
    _USAGE_ERROR,
    (exit_status.CREDENTIALS_REJECTED, "the gateway rejected the credentials at startup"),
    (exit_status.CANNOT_LISTEN, "the listen address cannot be bound"),
)
_TOKEN_EXITS = _exit_statuses(
    (exit_status.OK, "the token was printed"),
    (exit_status.FAILED, "the token endpoint stayed unavailable (after a few tries)"),
    _USAGE_ERROR,
    (exit_status.CREDENTIALS_REJECTED, "the gateway rejected the credentials"),
)
_PORT_ALONE = "or a port alone: 8080 and :8080 mean 127.0.0.1:8080"
_LISTEN_FORMS = (
    f"HOST:PORT, [IPV6]:PORT, unix:/path (not on Windows), {_PORT_ALONE}. A port alone is "
    "loopback, not every interface, on purpose: whoever reaches the proxy uses the gateway "
    "with its credentials"
)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {port}")
    return port


def _listen_flags(
    parser: argparse.ArgumentParser, default: str, what: str, forms: str = _LISTEN_FORMS
) -> None:
    """``--listen`` and ``--port``, which cannot both be given (a usage error, exit 2)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--listen", metavar="HOST:PORT", help=f"where {what} listens: {forms} ({default})"
    )
    where.add_argument(
        "--port",
        type=_port,
        metavar="PORT",
        help=f"listen on {LOOPBACK}:PORT, as kubectl proxy --port does; 0 picks a free port",
    )


def listen_of(args: argparse.Namespace) -> str | None:
    """The listen address the flags give (``--port N`` is ``--listen 127.0.0.1:N``)."""
    return f"{LOOPBACK}:{args.port}" if args.port is not None else args.listen


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructure-auth-proxy",
        description="A local authenticating reverse proxy for Instructure's API gateway.",
        epilog=_wrap(
            "A bare 'instructure-auth-proxy [flags]' runs serve. "
            "Each command's --help names its flags, defaults, environment and exit statuses."
        ),
        formatter_class=_FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the proxy (the default)",
        description=_wrap(
            "Run the proxy: requests to it go to the gateway with a fresh access token. "
            "Credentials come from DAP_CLIENT_ID and DAP_CLIENT_SECRET (or "
            "DAP_CLIENT_SECRET_FILE), or from the config file. The defaults below apply "
            "where no flag, environment variable or config file sets a value."
        ),
        epilog=f"""{_environment()}

signals:
  SIGTERM, SIGINT (Ctrl-C), and Ctrl-Break on Windows: stop accepting connections, give
  requests in flight up to timeouts.shutdown seconds to finish, exit 0.
  SIGHUP (not on Windows): reload secrets. Secret files are also watched for changes, on
  every platform.

{_SERVE_EXITS}
  (An unreachable gateway at startup is not an exit: the proxy serves, not ready, and retries.)""",
        formatter_class=_FORMATTER,
    )
    _config_flags(serve)
    _listen_flags(serve, "default: 127.0.0.1:8080", "the proxy")

    token = commands.add_parser(
        "token",
        help="print a valid gateway access token (read the warning in --help)",
        description=_wrap(
            "Fetch one gateway access token as the proxy would, trying an unavailable token "
            f"endpoint a few times. {PRINT_CAUTION}"
        ),
        epilog=f"""{_environment()}

{_TOKEN_EXITS}""",
        formatter_class=_FORMATTER,
    )
    _config_flags(token)
    token.add_argument(
        "--profile", default="default", help="the credential set to use (default: default)"
    )

    simulate = commands.add_parser(
        "simulate",
        help="run the gateway simulator on its own, for offline development",
        description=_wrap(
            "Run a local simulator of Instructure's gateway: its token endpoint and the DAP "
            "query API, with sample data. It prints its URL, its demo client id and secret, and "
            "the command that points the proxy at it. Reads no configuration and no environment."
        ),
        epilog=_exit_statuses(
            (exit_status.OK, "stopped by Ctrl-C or SIGTERM"),
            (exit_status.CONFIG, "invalid usage"),
            (exit_status.CANNOT_LISTEN, "the listen address cannot be bound"),
        ),
        formatter_class=_FORMATTER,
    )
    _listen_flags(simulate, "default: 127.0.0.1:9000", "the simulator", f"HOST:PORT, {_PORT_ALONE}")
    simulate.add_argument(
        "--token-lifetime",
        type=int,
        default=3599,
        metavar="SECONDS",
        help="how long the tokens it issues live (default: 3599, as the gateway's)",
    )
    simulate.add_argument(
        "--no-rate-limits",
        action="store_true",
        help="answer every request, with no 429s (default: rate limits as the gateway's)",
    )
    simulate.add_argument("--log-level", choices=LEVELS, help="(default: info)")

    demo = commands.add_parser(
        "demo",
        help="run the simulator and the proxy together: no credentials needed",
        description=_wrap(
            "Run the gateway simulator and the proxy in front of it, with the simulator's demo "
            "credentials, check it with one request, and print what to try with curl and with "
            "the dap CLI. Needs no account; reads no configuration and no environment."
        ),
        epilog=_exit_statuses(
            (exit_status.OK, "stopped by Ctrl-C or SIGTERM"),
            (exit_status.CONFIG, "invalid usage"),
            (exit_status.CANNOT_LISTEN, "a listen address cannot be bound"),
        ),
        formatter_class=_FORMATTER,
    )
    # The demo's proxy listens on TCP only: it prints curl lines for a URL.
    _listen_flags(demo, "default: 127.0.0.1:8080", "the proxy", f"HOST:PORT, {_PORT_ALONE}")
    demo.add_argument(
        "--simulator-listen",
        metavar="HOST:PORT",
        default="127.0.0.1:0",
        help="where the simulator listens (default: 127.0.0.1:0, a free port)",
    )
    demo.add_argument("--log-level", choices=LEVELS, help="(default: info)")
    return parser


def _config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="YAML configuration file (default: none)"
    )
    parser.add_argument(
        "--upstream", metavar="URL", help=f"the gateway (default: {DEFAULT_UPSTREAM})"
    )
    parser.add_argument(
        "--token-url",
        metavar="URL",
        help="the token endpoint (default: the upstream's /ids/auth/login)",
    )
    parser.add_argument("--log-level", choices=LEVELS, help="(default: info)")
    parser.add_argument("--log-format", choices=("text", "json"), help="(default: text)")


def _with_default_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """A bare ``instructure-auth-proxy [flags]`` means ``serve [flags]``; a first word that
    is not a command is a usage error naming the nearest one (not serve's "unrecognized
    arguments")."""
    args = list(argv)
    if args and not args[0].startswith("-") and args[0] not in COMMANDS:
        parser.error(
            f"unknown command {args[0]!r}{did_you_mean(args[0], set(COMMANDS))}; "
            f"the commands are {', '.join(COMMANDS)}"
        )
    if not any(arg in COMMANDS for arg in args) and not {"-h", "--help", "--version"} & set(args):
        return ["serve", *args]
    return args


def _flags_of(parser: argparse.ArgumentParser, command: str | None) -> set[str]:
    """The flags ``command`` accepts (``--port``, ``--listen``...), for suggestions."""
    for action in parser._actions:  # private, but argparse offers no public listing
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub = action.choices[command]
            return {flag for a in sub._actions for flag in a.option_strings}
    return set()


def _suggestion(parser: argparse.ArgumentParser, command: str | None, extra: list[str]) -> str:
    """`` (did you mean --port?)`` for the first mistyped flag (``--prot``), else a
    mistyped command; argparse's own ``suggest_on_error`` is Python 3.14's only."""
    flags = _flags_of(parser, command)
    for word in extra:
        if word.startswith("--"):
            if hint := did_you_mean(word.partition("=")[0], flags):
                return hint
        elif not word.startswith("-") and (hint := did_you_mean(word, set(COMMANDS))):
            return hint
    return ""


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed arguments: a bare ``instructure-auth-proxy [flags]`` means ``serve [flags]``."""
    parser = _parser()
    args, extra = parser.parse_known_args(_with_default_command(parser, argv))
    if extra:
        hint = _suggestion(parser, args.command, extra)
        parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args
