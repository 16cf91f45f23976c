"""Where configuration values come from, and which one wins: built-in defaults < YAML file
< environment < command-line flags. Every key has an environment name ``DAP_PROXY_<KEY>``
(dots become underscores); the credentials also answer to the official client's names,
``DAP_CLIENT_ID`` and ``DAP_CLIENT_SECRET`` (and ``DAP_CLIENT_SECRET_FILE``). ``DAP_API_URL``
is deliberately *not* read: beside a tool it points at the proxy itself.

A value is kept raw, with where it came from, until ``parse_all`` turns it into its type:
every message can then name the key and its source.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ..gateway import DEFAULT_UPSTREAM, RATE_LIMITS
from . import proxy_urls, values
from .files import FileRefused, read_small_file
from .records import DEFAULT_TTLS, CacheSettings, Config, RateLimits, Timeouts

__all__ = [
    "ENV_PREFIX",
    "KEYS",
    "SECTIONS",
    "Key",
    "Raw",
    "collect",
    "did_you_mean",
    "parse_all",
    "shown",
]

ENV_PREFIX = "DAP_PROXY_"

# Every default is the records' own (records.py), read from them, never written twice.
_DEFAULT = {f.name: f.default for f in fields(Config)}
_RATES = RateLimits()


@dataclass(frozen=True)
class Key:
    """A configuration key: its dotted name, parser, default and environment names."""

    name: str
    parse: Callable[[object], Any]
    default: object = None
    aliases: tuple[str, ...] = ()  # environment names besides DAP_PROXY_<KEY>
    secret: bool = False
    # How a rejected value is shown in a message; None: as given (secrets: never).
    show: Callable[[object], str] | None = None

    @property
    def env_names(self) -> tuple[str, ...]:
        return (*self.aliases, ENV_PREFIX + self.name.replace(".", "_").upper())


KEYS = {
    key.name: key
    for key in (
        Key("listen", values.parse_listen, f"{values.LOOPBACK}:8080"),
        Key("upstream", values.url, DEFAULT_UPSTREAM),
        Key("token_url", values.url),
        Key("client_id", values.client_id, aliases=("DAP_CLIENT_ID",)),
        Key("client_secret", values.text, aliases=("DAP_CLIENT_SECRET",), secret=True),
        Key("client_secret_file", values.text, aliases=("DAP_CLIENT_SECRET_FILE",)),
        Key("refresh_margin", values.non_negative_number, _DEFAULT["refresh_margin"]),
        Key("replay_body_limit", values.non_negative_number, _DEFAULT["replay_body_limit"]),
        Key("replay_memory", values.non_negative_number, _DEFAULT["replay_memory"]),
        Key("pool_size", values.positive_int, _DEFAULT["pool_size"]),
        *(Key(f"timeouts.{k}", values.positive_number, s) for k, s in asdict(Timeouts()).items()),
        Key("log_level", values.log_level, _DEFAULT["log_level"]),
        Key("log_format", values.log_format, _DEFAULT["log_format"]),
        Key("allow_non_loopback", values.boolean, False),
        Key("max_connections", values.positive_int, _DEFAULT["max_connections"]),
        Key("max_connections_per_address", values.positive_int),
        Key("min_request_rate", values.non_negative_number, _DEFAULT["min_request_rate"]),
        Key("min_request_rate_window", values.positive_number, _DEFAULT["min_request_rate_window"]),
        Key("shutdown_delay", values.non_negative_number, _DEFAULT["shutdown_delay"]),
        Key("access_keys", values.access_keys, secret=True),
        Key("access_keys_file", values.text),
        Key("local_clients", values.client_pairs, secret=True),
        Key("local_clients_file", values.text),
        # A secret that signs local tokens instead of keys derived from the client secrets.
        Key("local_token_key_file", values.text),
        Key("allowed_hosts", values.text_list),
        Key("allowed_origins", values.text_list),
        Key("allowed_methods", values.methods),
        Key("allowed_paths", values.paths),
        # Sharing one client id's budget (shaping.py) and the metadata cache (sharing/cache.py)
        Key("rate_limits.enabled", values.boolean, _RATES.enabled),
        Key("rate_limits.max_wait", values.non_negative_number, _RATES.max_wait),
        Key("rate_limits.window", values.positive_number, _RATES.window),
        Key("retry_after_cap", values.positive_number, _RATES.retry_after_cap),
        *(Key(f"rate_limits.{k}", values.positive_int, limit) for k, limit in RATE_LIMITS.items()),
        Key("cache.enabled", values.boolean, CacheSettings().enabled),
        *(Key(f"cache.{k}", values.non_negative_number, ttl) for k, ttl in DEFAULT_TTLS.items()),
        # Behind an institution's network (egress.py, trust.py, sharing/relay.py)
        # Its URL may carry a password: proxy_urls.proxy_url's errors never repeat the value.
        Key("egress_proxy", proxy_urls.proxy_url, show=proxy_urls.masked_text),
        Key("egress_proxy_credentials_file", values.text),
        Key("ca_file", values.text),
        Key("object_relay", values.boolean, _DEFAULT["object_relay"]),
        Key("relay_hosts", values.host_suffixes),
        # Several replicas as one proxy (sharing/shared_state.py); the URL may hold a password.
        Key("shared_state", proxy_urls.redis_url),  # its errors never repeat the value
        Key("shared_state_password_file", values.text),
    )
}


@dataclass(frozen=True)
class Raw:
    """A value as given, and where: ``rank`` 0 default, 1 file, 2 environment, 3 flag."""

    value: object
    source: str
    rank: int


def did_you_mean(name: str, known: Mapping[str, object] | set[str] | frozenset[str]) -> str:
    """`` (did you mean refresh_margin?)`` for a near miss, else ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


# The file's sections (``timeouts:``...): names whose keys are dotted below them.
SECTIONS = {name.partition(".")[0] for name in KEYS if "." in name}


def _flatten(tree: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """``{"timeouts": {"read": 5}}`` -> ``{"timeouts.read": 5}``; a key's own value stays
    whole (``client_secret: {a: 1}`` is a wrong value of client_secret, not a new key)."""
    flat: dict[str, object] = {}
    for name, value in tree.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping) and dotted not in KEYS:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _not_a_section(name: str, value: object, source: str) -> str:
    """``timeouts: 5``: a section given a value, said as such (not "unknown key")."""
    keys = [key.partition(".")[2] for key in KEYS if key.startswith(name + ".")]
    return (
        f"{name}: expected a mapping of {', '.join(keys)}, got {shown(value)} (write it as "
        f"{name}: followed by indented lines such as '  {keys[0]}: ...') (from {source})"
    )


def shown(value: object, key: Key | None = None) -> str:
    """A rejected value as a message shows it: quoted and cut short; a secret masked."""
    if key is not None and key.secret:
        return "'***' (a secret, not shown)"
    if key is not None and key.show is not None:
        return key.show(value)
    if isinstance(value, Mapping | list | tuple) or value is None or isinstance(value, bool):
        return values.kind(value)
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_yaml(path: Path, problems: list[str]) -> tuple[dict[str, object], object]:
    """The file's keys, flattened (``timeouts.read``), and its ``profiles`` section."""
    try:
        tree = yaml.safe_load(read_small_file(path)[0])
    except OSError as exc:
        problems.append(f"config file {path}: cannot be read ({exc.strerror})")
        return {}, None
    except FileRefused as exc:
        problems.append(f"config file {path}: {exc.reason}")
        return {}, None
    except UnicodeDecodeError:
        problems.append(f"config file {path}: not UTF-8 text")
        return {}, None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problems.append(f"config file {path}: not valid YAML{where}")
        return {}, None
    if tree is None:
        return {}, None
    if not isinstance(tree, Mapping):
        problems.append(f"config file {path}: expected a mapping of keys at the top level")
        return {}, None
    tree = dict(tree)
    profiles = tree.pop("profiles", None)
    flat = _flatten(tree)
    for unknown in sorted(set(flat) - set(KEYS)):
        if unknown in SECTIONS:
            problems.append(_not_a_section(unknown, flat[unknown], f"config file {path}"))
            continue
        hint = did_you_mean(unknown, KEYS)
        problems.append(f"{unknown}: unknown key{hint} (from config file {path})")
    return {name: value for name, value in flat.items() if name in KEYS}, profiles


def collect(
    path: Path | None,
    environ: Mapping[str, str],
    flags: Mapping[str, object],
    problems: list[str],
    warnings: list[str],
) -> tuple[dict[str, Raw], object]:
    """Every key's winning raw value, and the file's ``profiles`` section (unparsed). An
    unknown ``DAP_PROXY_*`` variable is a warning, not a problem: the environment is shared
    with other programs (and other versions of this one)."""
    raw = {k: Raw(key.default, "default", 0) for k, key in KEYS.items() if key.default is not None}
    profiles: object = None
    if path is not None:
        flat, profiles = _read_yaml(path, problems)
        for name, value in flat.items():
            if value is not None:
                raw[name] = Raw(value, f"config file {path}", 1)
    for name, key in KEYS.items():
        # The later names win: DAP_PROXY_CLIENT_ID is more specific than DAP_CLIENT_ID.
        for env_name in key.env_names:
            if environ.get(env_name, "") != "":
                raw[name] = Raw(environ[env_name], f"environment variable {env_name}", 2)
    known_env = {env for key in KEYS.values() for env in key.env_names}
    for env_name in sorted(environ):
        if (
            env_name.startswith(ENV_PREFIX)
            and env_name not in known_env
            and not env_name.startswith(ENV_PREFIX + "PROFILE_")
            and env_name != ENV_PREFIX + "CONFIG"
        ):
            hint = did_you_mean(env_name, known_env)
            warnings.append(f"{env_name}: not a setting of this proxy, ignored{hint}")
    for name, value in flags.items():
        if value is not None:
            raw[name] = Raw(value, f"flag --{name.replace('_', '-')}", 3)
    return raw, profiles


def parse_all(
    raw: Mapping[str, Raw], problems: list[str], keys: Mapping[str, Key] = KEYS, prefix: str = ""
) -> dict[str, Any]:
    """Each raw value parsed by its key; a bad one becomes a problem naming key, the value
    given (masked if secret) and source."""
    parsed: dict[str, Any] = {}
    for name, item in raw.items():
        key = keys[name]
        try:
            parsed[name] = key.parse(item.value)
        except ValueError as exc:
            detail = str(exc)
            # A secret's parsers never repeat it (values.py); this checks, and fails closed.
            if key.secret and str(item.value).strip() and str(item.value).strip() in detail:
                detail = "invalid value"
            if "got " not in detail:  # the parser showed it already
                detail += f", got {shown(item.value, key)}"
            problems.append(f"{prefix}{name}: {detail} (from {item.source})")
    return parsed
