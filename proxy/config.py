"""Configuration: frozen records, and ``load_config`` which layers their sources.

Precedence, lowest first: built-in defaults < YAML file < environment < command-line flags.
Every key has an environment name ``DAP_PROXY_<KEY>`` (dots become underscores); the
credentials also answer to the names the official client uses, ``DAP_CLIENT_ID`` and
``DAP_CLIENT_SECRET``, and to ``DAP_CLIENT_SECRET_FILE`` for Docker and Kubernetes secrets.
``DAP_API_URL`` is deliberately *not* read: beside a tool it points at the proxy itself.

``load_config`` is pure apart from reading the files it is told about: only ``cli.py`` passes
``os.environ``. It reports every problem at once, each naming the key and where the value came
from, and never repeats a secret.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yarl import URL

from .errors import ConfigError

__all__ = [
    "DEFAULT_UPSTREAM",
    "Config",
    "Credentials",
    "ListenAddress",
    "Timeouts",
    "UpstreamConfig",
    "load_config",
    "parse_listen",
]

DEFAULT_UPSTREAM = "https://api-gateway.instructure.com"
TOKEN_PATH = "/ids/auth/login"  # noqa: S105 - a path, not a password
ENV_PREFIX = "DAP_PROXY_"


@dataclass(frozen=True)
class Credentials:
    """A gateway client id and its secret; the secret never appears in a repr."""

    client_id: str
    client_secret: str = field(repr=False)


@dataclass(frozen=True)
class ListenAddress:
    """Where the proxy accepts connections: ``ListenAddress("127.0.0.1", 8080)``."""

    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UpstreamConfig:
    """One credential set and the gateway it is used against (a profile, in time)."""

    url: URL
    token_url: URL
    credentials: Credentials | None


@dataclass(frozen=True)
class Timeouts:
    """Seconds: connecting upstream, between bytes read upstream, one token request, draining."""

    connect: float = 10.0
    read: float = 300.0
    token: float = 30.0
    shutdown: float = 15.0


@dataclass(frozen=True)
class Config:
    """Everything the proxy needs to run; build it with ``load_config``."""

    listen: ListenAddress
    upstream: UpstreamConfig
    refresh_margin: float = 300.0
    replay_body_limit: int = 1024 * 1024
    pool_size: int = 100
    timeouts: Timeouts = field(default_factory=Timeouts)
    log_level: str = "info"


# --------------------------------------------------------------------------- the keys


def _text(value: object) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError("expected a string")
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _positive_number(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds") from None
    if isinstance(value, bool) or not number > 0:
        raise ValueError("expected a positive number of seconds")
    return number


def _non_negative_number(value: object) -> float:
    if value in (0, "0"):
        return 0.0
    return _positive_number(value)


def _positive_int(value: object) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ValueError("expected a whole number") from None
    if isinstance(value, bool) or number <= 0:
        raise ValueError("expected a positive whole number")
    return number


def _url(value: object) -> URL:
    text = _text(value)
    url = URL(text)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    if url.user or url.password:
        raise ValueError("must not carry credentials; use client_id and client_secret")
    if url.query_string or url.fragment:
        raise ValueError("must not have a query string or fragment")
    return url.with_path(url.path.rstrip("/") or "/")


def parse_listen(value: object) -> ListenAddress:
    """``HOST:PORT`` or ``[V6]:PORT`` as a ``ListenAddress``; ``ValueError`` says what is wrong."""
    text = _text(value)
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"expected HOST:PORT with a numeric port, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return ListenAddress(host, port)


def _log_level(value: object) -> str:
    level = _text(value).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ValueError(f"expected debug, info, warning or error, got {level!r}")
    return level


@dataclass(frozen=True)
class _Key:
    name: str
    parse: Callable[[object], Any]
    default: object = None
    aliases: tuple[str, ...] = ()  # environment names besides DAP_PROXY_<KEY>
    secret: bool = False

    @property
    def env_names(self) -> tuple[str, ...]:
        return (*self.aliases, ENV_PREFIX + self.name.replace(".", "_").upper())


_KEYS = {
    key.name: key
    for key in (
        _Key("listen", parse_listen, "127.0.0.1:8080"),
        _Key("upstream", _url, DEFAULT_UPSTREAM),
        _Key("token_url", _url),
        _Key("client_id", _text, aliases=("DAP_CLIENT_ID",)),
        _Key("client_secret", _text, aliases=("DAP_CLIENT_SECRET",), secret=True),
        _Key("client_secret_file", _text, aliases=("DAP_CLIENT_SECRET_FILE",)),
        _Key("refresh_margin", _non_negative_number, 300),
        _Key("replay_body_limit", _non_negative_number, 1024 * 1024),
        _Key("pool_size", _positive_int, 100),
        _Key("timeouts.connect", _positive_number, 10),
        _Key("timeouts.read", _positive_number, 300),
        _Key("timeouts.token", _positive_number, 30),
        _Key("timeouts.shutdown", _positive_number, 15),
        _Key("log_level", _log_level, "info"),
    )
}


# --------------------------------------------------------------------------- layering


@dataclass(frozen=True)
class _Raw:
    value: object
    source: str
    rank: int  # 0 default, 1 file, 2 environment, 3 flag


def _flatten(tree: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for name, value in tree.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _read_yaml(path: Path, problems: list[str]) -> dict[str, object]:
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"config file {path}: cannot be read ({exc.strerror})")
        return {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problems.append(f"config file {path}: not valid YAML{where}")
        return {}
    if tree is None:
        return {}
    if not isinstance(tree, Mapping):
        problems.append(f"config file {path}: expected a mapping of keys at the top level")
        return {}
    flat = _flatten(tree)
    for unknown in sorted(set(flat) - set(_KEYS)):
        problems.append(f"{unknown}: unknown key (from config file {path})")
    return {name: value for name, value in flat.items() if name in _KEYS}


def _collect(
    path: Path | None,
    environ: Mapping[str, str],
    flags: Mapping[str, object],
    problems: list[str],
) -> dict[str, _Raw]:
    raw = {
        name: _Raw(key.default, "default", 0)
        for name, key in _KEYS.items()
        if key.default is not None
    }
    if path is not None:
        for name, value in _read_yaml(path, problems).items():
            if value is not None:
                raw[name] = _Raw(value, f"config file {path}", 1)
    for name, key in _KEYS.items():
        # The later names win: DAP_PROXY_CLIENT_ID is more specific than DAP_CLIENT_ID.
        for env_name in key.env_names:
            if environ.get(env_name, "") != "":
                raw[name] = _Raw(environ[env_name], f"environment variable {env_name}", 2)
    for name, value in flags.items():
        if value is not None:
            raw[name] = _Raw(value, f"flag --{name.replace('_', '-')}", 3)
    return raw


def _parse_all(raw: Mapping[str, _Raw], problems: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, item in raw.items():
        try:
            values[name] = _KEYS[name].parse(item.value)
        except ValueError as exc:
            # A secret's parse error says what is wrong with it, never what it is.
            detail = "invalid value" if _KEYS[name].secret else str(exc)
            problems.append(f"{name}: {detail} (from {item.source})")
    return values


def _read_secret_file(path_text: str, source: str, problems: list[str]) -> str | None:
    try:
        secret = Path(path_text).read_text(encoding="utf-8").strip()
    except OSError as exc:
        problems.append(
            f"client_secret_file: cannot read {path_text} ({exc.strerror}) (from {source})"
        )
        return None
    except UnicodeDecodeError:
        problems.append(f"client_secret_file: {path_text} is not UTF-8 text (from {source})")
        return None
    if not secret:
        problems.append(f"client_secret_file: {path_text} is empty (from {source})")
        return None
    return secret


def _credentials(
    raw: Mapping[str, _Raw], values: Mapping[str, Any], problems: list[str], required: bool
) -> Credentials | None:
    direct, from_file = raw.get("client_secret"), raw.get("client_secret_file")
    secret: str | None = None
    if direct and from_file and direct.rank == from_file.rank:
        problems.append(
            f"client_secret and client_secret_file: set only one "
            f"(from {direct.source} and {from_file.source})"
        )
    elif from_file and (not direct or from_file.rank > direct.rank):
        if "client_secret_file" in values:
            secret = _read_secret_file(values["client_secret_file"], from_file.source, problems)
    else:
        secret = values.get("client_secret")

    client_id = values.get("client_id")
    if client_id and secret:
        return Credentials(client_id, secret)
    if required or client_id or direct or from_file:
        if "client_id" not in raw:
            problems.append(
                "client_id: not set (set DAP_CLIENT_ID or client_id in the config file)"
            )
        if not (direct or from_file):
            problems.append(
                "client_secret: not set (set DAP_CLIENT_SECRET, DAP_CLIENT_SECRET_FILE, "
                "or client_secret_file in the config file)"
            )
    return None


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
    *,
    require_credentials: bool = True,
) -> Config:
    """Layer defaults < ``path`` (YAML) < ``environ`` < ``flags`` and validate everything.

    ``flags`` maps key names (``"listen"``, ``"upstream"``, ...) to values; ``None`` means unset.
    Raises ``ConfigError`` listing every problem found.
    """
    environ = environ or {}
    flags = flags or {}
    problems: list[str] = []
    for name in flags:
        if name not in _KEYS:
            raise ValueError(f"unknown configuration key {name!r}")  # a programming error

    raw = _collect(path, environ, flags, problems)
    values = _parse_all(raw, problems)
    credentials = _credentials(raw, values, problems, require_credentials)
    if problems:
        raise ConfigError(problems)

    upstream_url: URL = values["upstream"]
    token_url: URL = values.get("token_url") or upstream_url.with_path(
        upstream_url.path.rstrip("/") + TOKEN_PATH
    )
    return Config(
        listen=values["listen"],
        upstream=UpstreamConfig(upstream_url, token_url, credentials),
        refresh_margin=values["refresh_margin"],
        replay_body_limit=int(values["replay_body_limit"]),
        pool_size=values["pool_size"],
        timeouts=Timeouts(
            connect=values["timeouts.connect"],
            read=values["timeouts.read"],
            token=values["timeouts.token"],
            shutdown=values["timeouts.shutdown"],
        ),
        log_level=values["log_level"],
    )
