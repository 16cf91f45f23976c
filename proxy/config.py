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

import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yarl import URL

from . import values
from .errors import ConfigError
from .values import ListenAddress, parse_listen

__all__ = [
    "DEFAULT_UPSTREAM",
    "Config",
    "Credentials",
    "Grant",
    "ListenAddress",
    "Profile",
    "Timeouts",
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
class Profile:
    """One credential set and the gateway it is used against.

    ``default`` comes from the top-level keys; named profiles from ``profiles:`` or
    ``DAP_PROXY_PROFILE_<NAME>_<KEY>``. ``local_client_ids`` are the client ids that, at the
    local login, choose this profile (its own name always does).
    """

    url: URL
    token_url: URL
    credentials: Credentials | None
    name: str = "default"
    local_client_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Timeouts:
    """Seconds: connecting upstream, between bytes read upstream, one token request, draining,
    and how long a client may stay silent while sending its request's head or body."""

    connect: float = 10.0
    read: float = 300.0
    token: float = 30.0
    shutdown: float = 15.0
    client: float = 30.0


Grant = frozenset[str] | None  # the profiles a key or local client may use; None: all


@dataclass(frozen=True)
class AccessConfig:
    """Who may use the proxy. Empty: anyone who can reach it (loopback by default).

    ``keys`` maps bearer keys for plain clients (curl) to the profiles each may use;
    ``clients`` maps local client ids, for tools that log in (the ``dap`` CLI), to their
    secret and profiles. Neither appears in a repr.
    """

    keys: Mapping[str, Grant] = field(default_factory=dict, repr=False)
    clients: Mapping[str, tuple[str, Grant]] = field(default_factory=dict, repr=False)

    @property
    def required(self) -> bool:
        return bool(self.keys or self.clients)


@dataclass(frozen=True)
class Policy:
    """What requests are admitted. ``None`` means no restriction of that kind."""

    allowed_hosts: frozenset[str] | None = None  # Host names, lower case, no port
    allowed_origins: frozenset[str] = frozenset()  # browser origins granted CORS
    allowed_methods: frozenset[str] | None = None
    allowed_paths: tuple[str, ...] | None = None  # path prefixes


@dataclass(frozen=True)
class Config:
    """Everything the proxy needs to run; build it with ``load_config``."""

    listen: ListenAddress
    upstream: Profile  # the top-level settings: the default profile, credentials or not
    refresh_margin: float = 300.0
    replay_body_limit: int = 1024 * 1024
    pool_size: int = 1000  # as many as max_connections: a request never waits for one
    timeouts: Timeouts = field(default_factory=Timeouts)
    log_level: str = "info"
    log_format: str = "text"
    access: AccessConfig = field(default_factory=AccessConfig)
    policy: Policy = field(default_factory=Policy)
    allow_non_loopback: bool = False
    max_connections: int = 1000
    # Problems worth a warning at startup but not a refusal (a secret file others can read).
    warnings: tuple[str, ...] = ()
    # Every credential set in use, by name: ``default`` (when the top level has credentials)
    # and the named profiles.
    profiles: Mapping[str, Profile] = field(default_factory=dict)
    # Files whose change means a reload: the config file and every secret file read.
    watched_files: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.profiles and self.upstream.credentials is not None:
            object.__setattr__(self, "profiles", {"default": self.upstream})


# --------------------------------------------------------------------------- the keys


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
        _Key("listen", values.listen, "127.0.0.1:8080"),
        _Key("upstream", values.url, DEFAULT_UPSTREAM),
        _Key("token_url", values.url),
        _Key("client_id", values.text, aliases=("DAP_CLIENT_ID",)),
        _Key("client_secret", values.text, aliases=("DAP_CLIENT_SECRET",), secret=True),
        _Key("client_secret_file", values.text, aliases=("DAP_CLIENT_SECRET_FILE",)),
        _Key("refresh_margin", values.non_negative_number, 300),
        _Key("replay_body_limit", values.non_negative_number, 1024 * 1024),
        _Key("pool_size", values.positive_int, 1000),
        _Key("timeouts.connect", values.positive_number, 10),
        _Key("timeouts.read", values.positive_number, 300),
        _Key("timeouts.token", values.positive_number, 30),
        _Key("timeouts.shutdown", values.positive_number, 15),
        _Key("timeouts.client", values.positive_number, 30),
        _Key("log_level", values.log_level, "info"),
        _Key("log_format", values.log_format, "text"),
        _Key("allow_non_loopback", values.boolean, False),
        _Key("max_connections", values.positive_int, 1000),
        _Key("access_keys", values.access_keys, secret=True),
        _Key("access_keys_file", values.text),
        _Key("local_clients", values.client_pairs, secret=True),
        _Key("local_clients_file", values.text),
        _Key("allowed_hosts", values.text_list),
        _Key("allowed_origins", values.text_list),
        _Key("allowed_methods", values.methods),
        _Key("allowed_paths", values.paths),
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


def _read_yaml(path: Path, problems: list[str]) -> tuple[dict[str, object], object]:
    """The file's keys, flattened (``timeouts.read``), and its ``profiles`` section."""
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"config file {path}: cannot be read ({exc.strerror})")
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
    for unknown in sorted(set(flat) - set(_KEYS)):
        problems.append(f"{unknown}: unknown key (from config file {path})")
    return {name: value for name, value in flat.items() if name in _KEYS}, profiles


def _collect(
    path: Path | None,
    environ: Mapping[str, str],
    flags: Mapping[str, object],
    problems: list[str],
) -> tuple[dict[str, _Raw], object]:
    raw = {
        name: _Raw(key.default, "default", 0)
        for name, key in _KEYS.items()
        if key.default is not None
    }
    profiles: object = None
    if path is not None:
        flat, profiles = _read_yaml(path, problems)
        for name, value in flat.items():
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
    return raw, profiles


# --------------------------------------------------------------------------- profiles

_PROFILE_KEYS = {
    key.name: key
    for key in (
        _Key("client_id", values.text),
        _Key("client_secret", values.text, secret=True),
        _Key("client_secret_file", values.text),
        _Key("upstream", values.url),
        _Key("token_url", values.url),
        _Key("local_client_ids", values.text_list),
    )
}
_PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# A profile is chosen by the first path segment, so it must not shadow a gateway path.
_RESERVED_PROFILE_NAMES = frozenset({"default", "dap", "ids", "-"})
_PROFILE_ENV = "DAP_PROXY_PROFILE_"


def _profile_sources(
    tree: object, path: Path | None, environ: Mapping[str, str], problems: list[str]
) -> dict[str, dict[str, _Raw]]:
    """Each named profile's raw keys: the file's ``profiles:`` < ``DAP_PROXY_PROFILE_*``."""
    found: dict[str, dict[str, _Raw]] = {}
    if tree is not None:
        if not isinstance(tree, Mapping):
            problems.append(
                f"profiles: expected a mapping of profile names (from config file {path})"
            )
        else:
            for name, keys in tree.items():
                if not isinstance(keys, Mapping):
                    problems.append(
                        f"profiles.{name}: expected a mapping of keys (from config file {path})"
                    )
                    continue
                for key, value in keys.items():
                    if key not in _PROFILE_KEYS:
                        problems.append(
                            f"profiles.{name}.{key}: unknown key (from config file {path})"
                        )
                    elif value is not None:
                        found.setdefault(str(name), {})[key] = _Raw(value, f"config file {path}", 1)
    # Longest key names first: _CLIENT_SECRET_FILE must not be read as _CLIENT_SECRET.
    suffixes = sorted(_PROFILE_KEYS, key=len, reverse=True)
    for env_name, value in environ.items():
        if not env_name.startswith(_PROFILE_ENV) or value == "":
            continue
        rest = env_name.removeprefix(_PROFILE_ENV)
        for key in suffixes:
            if rest.endswith("_" + key.upper()):
                name = rest[: -len(key) - 1].lower()
                found.setdefault(name, {})[key] = _Raw(value, f"environment variable {env_name}", 2)
                break
        else:
            problems.append(f"{env_name}: not a profile setting (DAP_PROXY_PROFILE_<NAME>_<KEY>)")
    return found


def _named_profiles(
    sources: Mapping[str, Mapping[str, _Raw]],
    top: Mapping[str, Any],
    problems: list[str],
    into: _Reader,
) -> dict[str, Profile]:
    profiles: dict[str, Profile] = {}
    for name, raw in sorted(sources.items()):
        prefix = f"profiles.{name}."
        if not _PROFILE_NAME.fullmatch(name) or name in _RESERVED_PROFILE_NAMES:
            problems.append(
                f"profiles.{name}: a profile name is lower-case letters, digits, - and _, "
                f"and not one of {', '.join(sorted(_RESERVED_PROFILE_NAMES))}"
            )
            continue
        values = _parse_all(raw, problems, _PROFILE_KEYS, prefix)
        reader = _Reader(raw, values, prefix)
        credentials = _credentials(reader, required=True)
        problems += reader.problems
        into.warnings += reader.warnings
        into.files += reader.files
        url: URL = values.get("upstream") or top["upstream"]
        token_url: URL = (
            values.get("token_url")
            or (top.get("token_url") if "upstream" not in values else None)
            or url.with_path(url.path.rstrip("/") + TOKEN_PATH)
        )
        profiles[name] = Profile(
            url, token_url, credentials, name, tuple(values.get("local_client_ids", ()))
        )
    return profiles


def _parse_all(
    raw: Mapping[str, _Raw],
    problems: list[str],
    keys: Mapping[str, _Key] | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    keys = keys or _KEYS
    values: dict[str, Any] = {}
    for name, item in raw.items():
        try:
            values[name] = keys[name].parse(item.value)
        except ValueError as exc:
            # A secret's parse error says what is wrong with it, never what it is.
            detail = "invalid value" if keys[name].secret else str(exc)
            problems.append(f"{prefix}{name}: {detail} (from {item.source})")
    return values


class _Reader:
    """Reads the files that hold secrets, collecting problems and warnings as it goes.

    ``prefix`` names the profile in messages (``profiles.yale.``) for its keys.
    """

    def __init__(
        self, raw: Mapping[str, _Raw], values: Mapping[str, Any], prefix: str = ""
    ) -> None:
        self.raw, self.values, self.prefix = raw, values, prefix
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.files: list[str] = []  # the secret files read, to watch for changes

    def private_file(self, key: str) -> str | None:
        """The text of the file named by ``key``, or ``None`` (a problem is recorded)."""
        path_text, source = self.values.get(key), self.raw[key].source
        if path_text is None:
            return None  # its value was invalid; already reported
        path = Path(path_text)
        self.files.append(path_text)
        try:
            text = path.read_text(encoding="utf-8").strip()
            mode = path.stat().st_mode
        except OSError as exc:
            self.problems.append(
                f"{self.prefix}{key}: cannot read {path_text} ({exc.strerror}) (from {source})"
            )
            return None
        except UnicodeDecodeError:
            self.problems.append(f"{self.prefix}{key}: {path_text} is not UTF-8 (from {source})")
            return None
        if not text:
            self.problems.append(f"{self.prefix}{key}: {path_text} is empty (from {source})")
            return None
        # Others, not the group: Kubernetes mounts secrets group-readable (fsGroup) on purpose.
        if mode & stat.S_IRWXO:
            self.warnings.append(
                f"{self.prefix}{key}: {path_text} can be read by other users "
                f"(mode {stat.filemode(mode)}); chmod o-rwx it"
            )
        return text

    def one_of(self, direct_key: str, file_key: str) -> Any:
        """A value set directly or through a file: the higher layer wins; a tie is a problem."""
        direct, from_file = self.raw.get(direct_key), self.raw.get(file_key)
        if direct and from_file and direct.rank == from_file.rank:
            self.problems.append(
                f"{self.prefix}{direct_key} and {file_key}: set only one "
                f"(from {direct.source} and {from_file.source})"
            )
            return None
        if not from_file or (direct and direct.rank > from_file.rank):
            return self.values.get(direct_key)
        text = self.private_file(file_key)
        if text is None:
            return None
        # One entry a line; blank lines and # comments are skipped. A secret is the whole text.
        lines = [line.strip() for line in text.splitlines()]
        entries = [line for line in lines if line and not line.startswith("#")]
        try:
            return text if direct_key == "client_secret" else _KEYS[direct_key].parse(entries)
        except ValueError as exc:  # the parsers' messages never repeat a secret
            self.problems.append(f"{self.prefix}{file_key}: {self.values[file_key]}: {exc}")
            return None


def _credentials(reader: _Reader, required: bool) -> Credentials | None:
    secret = reader.one_of("client_secret", "client_secret_file")
    client_id = reader.values.get("client_id")
    if client_id and secret:
        return Credentials(client_id, secret)
    mentioned = {"client_id", "client_secret", "client_secret_file"} & set(reader.raw)
    if required or mentioned:
        id_hint = "DAP_CLIENT_ID or client_id in the config file"
        where_set = (
            "DAP_CLIENT_SECRET, DAP_CLIENT_SECRET_FILE, or client_secret_file in the config file"
        )
        if reader.prefix:
            env = f"DAP_PROXY_PROFILE_{reader.prefix.split('.')[1].upper()}"
            id_hint = f"{env}_CLIENT_ID or {reader.prefix}client_id"
            where_set = f"{env}_CLIENT_SECRET_FILE or {reader.prefix}client_secret_file"
        if "client_id" not in reader.raw:
            reader.problems.append(f"{reader.prefix}client_id: not set (set {id_hint})")
        if not {"client_secret", "client_secret_file"} & mentioned:
            reader.problems.append(f"{reader.prefix}client_secret: not set (set {where_set})")
    return None


def _access(reader: _Reader) -> AccessConfig:
    keys = reader.one_of("access_keys", "access_keys_file") or {}
    clients = reader.one_of("local_clients", "local_clients_file") or {}
    return AccessConfig(dict(keys), dict(clients))


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _policy(values: Mapping[str, Any], listen: ListenAddress) -> Policy:
    hosts: tuple[str, ...] | None = values.get("allowed_hosts")
    if hosts is None:
        # Loopback names and the listen address: a web page reaching the proxy through a
        # DNS name it controls (DNS rebinding) sends that name as Host, and is refused.
        own = {listen.host} if listen.host and listen.host not in ("0.0.0.0", "::") else set()  # noqa: S104
        allowed: frozenset[str] | None = _LOOPBACK_NAMES | own
    elif "*" in hosts:
        allowed = None
    else:
        allowed = frozenset(h.lower().strip("[]") for h in hosts)
    return Policy(
        allowed_hosts=allowed,
        allowed_origins=frozenset(values.get("allowed_origins") or ()),
        allowed_methods=values.get("allowed_methods"),
        allowed_paths=values.get("allowed_paths"),
    )


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

    raw, profiles_tree = _collect(path, environ, flags, problems)
    values = _parse_all(raw, problems)
    reader = _Reader(raw, values)
    sources = _profile_sources(profiles_tree, path, environ, problems)
    # With named profiles, top-level credentials are optional: they make a "default".
    credentials = _credentials(reader, require_credentials and not sources)
    access = _access(reader)
    problems += reader.problems
    named = _named_profiles(sources, values, problems, reader) if "upstream" in values else {}
    known = set(named) | ({"default"} if credentials else set())
    for grant in (*access.keys.values(), *(p for _, p in access.clients.values())):
        if grant is not None and (unknown := sorted(grant - known)):
            problems.append(f"access: grants unknown profiles: {', '.join(unknown)}")
    for name, profile in named.items():
        for client_id in profile.local_client_ids:
            if client_id in named and client_id != name:
                problems.append(f"profiles.{name}.local_client_ids: {client_id} names a profile")
    listen: ListenAddress | None = values.get("listen")
    if (
        listen is not None
        and not listen.is_loopback
        and not access.required
        and not values.get("allow_non_loopback")
    ):
        problems.append(
            f"listen: {listen} is not loopback, and anyone who can reach it would use the "
            f"gateway with the proxy's credentials; require access_keys or local_clients, "
            f"or set allow_non_loopback: true (DAP_PROXY_ALLOW_NON_LOOPBACK=true) "
            f"(from {raw['listen'].source})"
        )
    if problems:
        raise ConfigError(problems)
    assert listen is not None  # noqa: S101 - a problem above otherwise

    upstream_url: URL = values["upstream"]
    token_url: URL = values.get("token_url") or upstream_url.with_path(
        upstream_url.path.rstrip("/") + TOKEN_PATH
    )
    default = Profile(upstream_url, token_url, credentials)
    profiles = ({"default": default} if credentials else {}) | named
    return Config(
        listen=listen,
        upstream=default,
        profiles=profiles,
        refresh_margin=values["refresh_margin"],
        replay_body_limit=int(values["replay_body_limit"]),
        pool_size=values["pool_size"],
        timeouts=Timeouts(
            connect=values["timeouts.connect"],
            read=values["timeouts.read"],
            token=values["timeouts.token"],
            shutdown=values["timeouts.shutdown"],
            client=values["timeouts.client"],
        ),
        log_level=values["log_level"],
        log_format=values["log_format"],
        access=access,
        policy=_policy(values, listen),
        allow_non_loopback=values["allow_non_loopback"],
        max_connections=values["max_connections"],
        warnings=tuple(reader.warnings),
        watched_files=tuple(dict.fromkeys([*([str(path)] if path else []), *reader.files])),
    )
