"""``load_config``: every source layered, every value parsed, every rule checked at once,
every problem reported together (naming the key and where its value came from, never a
secret). Pure apart from reading the files it is told about: only ``cli.py`` passes
``os.environ``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from yarl import URL

from ..errors import ConfigError
from ..gateway import RATE_LIMITS, token_url_for
from . import network
from .inbound import MIN_SECRET_LENGTH, local_token_key, short_secrets
from .profiles import named_profiles, profile_sources
from .records import (
    DEFAULT_TTLS,
    AccessConfig,
    CacheSettings,
    Config,
    Policy,
    Profile,
    RateLimits,
    SharedStateConfig,
    Timeouts,
)
from .secret_files import SecretReader, access_config, credentials
from .sources import KEYS, Raw, collect, parse_all
from .values import ListenAddress

__all__ = ["MIN_ACCESS_KEY_LENGTH", "MIN_SECRET_LENGTH", "load_config"]

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MIN_ACCESS_KEY_LENGTH = MIN_SECRET_LENGTH  # the one rule: inbound.short_secrets


def _policy(parsed: Mapping[str, Any], listen: ListenAddress, access: AccessConfig) -> Policy:
    hosts: tuple[str, ...] | None = parsed.get("allowed_hosts")
    if "*" in (hosts or ()) or (hosts is None and access.required):
        # Any Host: "*" says so, or inbound authentication does: a web page cannot present an
        # access key or a local token, so the Host check (against DNS rebinding) protects nothing.
        allowed: frozenset[str] | None = None
    elif hosts is None:
        # Loopback names and the listen address: a web page reaching the proxy through a
        # DNS name it controls (DNS rebinding) sends that name as Host, and is refused.
        own = {listen.host} if listen.host and listen.host not in ("0.0.0.0", "::") else set()  # noqa: S104
        allowed = _LOOPBACK_NAMES | own
    else:
        # Loopback names stay admitted: a page cannot rebind them (a Host of 127.0.0.1 comes
        # only from a page of that very origin), and health checks inside a container use them.
        allowed = _LOOPBACK_NAMES | frozenset(h.lower().strip("[]") for h in hosts)
    return Policy(
        allowed_hosts=allowed,
        allowed_origins=frozenset(parsed.get("allowed_origins") or ()),
        allowed_methods=parsed.get("allowed_methods"),
        allowed_paths=parsed.get("allowed_paths"),
    )


def _check_access(
    access: AccessConfig, known_profiles: set[str], raw: Mapping[str, Raw], problems: list[str]
) -> None:
    problems += short_secrets(access, raw)
    for grant in (*access.keys.values(), *(grant for _, grant in access.clients.values())):
        if grant is not None and (unknown := sorted(grant - known_profiles)):
            problems.append(f"access: grants unknown profiles: {', '.join(unknown)}")


def _shared_state(reader: SecretReader, problems: list[str]) -> SharedStateConfig | None:
    """``shared_state``, its password from ``shared_state_password_file`` when not in it."""
    url: URL | None = reader.parsed.get("shared_state")
    if "shared_state_password_file" not in reader.raw:
        return SharedStateConfig(url) if url is not None else None
    source = reader.raw["shared_state_password_file"].source
    if url is None:
        if "shared_state" not in reader.raw:
            problems.append(f"shared_state_password_file: set, but shared_state is not ({source})")
        return None
    if url.password:
        problems.append(
            "shared_state and shared_state_password_file: the URL holds a password already; "
            f"set only one (from {reader.raw['shared_state'].source} and {source})"
        )
        return None
    before = len(reader.problems)
    password = reader.private_file("shared_state_password_file")
    problems += reader.problems[before:]
    return SharedStateConfig(url, password) if password is not None else None


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
    *,
    require_credentials: bool = True,
) -> Config:
    """Layer defaults < ``path`` (YAML) < ``environ`` < ``flags`` (key names to values,
    ``None`` unset) and validate everything; raises ``ConfigError`` listing every problem."""
    environ = environ or {}
    flags = flags or {}
    problems: list[str] = []
    warnings: list[str] = []
    for name in flags:
        if name not in KEYS:
            raise ValueError(f"unknown configuration key {name!r}")  # a programming error

    raw, profiles_tree = collect(path, environ, flags, problems, warnings)
    parsed = parse_all(raw, problems)
    reader = SecretReader(raw, parsed)
    sources = profile_sources(profiles_tree, path, environ, problems)
    # With named profiles, top-level credentials are optional: they make a "default".
    top_credentials = credentials(reader, require_credentials and not sources)
    access = dataclasses.replace(access_config(reader), token_key=local_token_key(reader))
    problems += reader.problems
    named = named_profiles(sources, parsed, problems, reader) if "upstream" in parsed else {}
    known = set(named) | ({"default"} if top_credentials else set())
    _check_access(access, known, raw, problems)
    for name, profile in named.items():
        for client_id in profile.local_client_ids:
            if client_id in named and client_id != name:
                problems.append(f"profiles.{name}.local_client_ids: {client_id} names a profile")
    read_before = len(reader.problems)
    egress = network.egress(environ, reader, problems)
    problems += reader.problems[read_before:]  # the credentials file's own
    trust = network.trust(parsed, reader, environ, problems)
    shared_state = _shared_state(reader, problems)
    listen: ListenAddress | None = parsed.get("listen")
    if listen is not None and not (
        listen.is_loopback or access.required or parsed.get("allow_non_loopback")
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

    upstream_url: URL = parsed["upstream"]
    token_url: URL = parsed.get("token_url") or token_url_for(upstream_url)
    default = Profile(upstream_url, token_url, top_credentials)
    profiles = ({"default": default} if top_credentials else {}) | named
    cleartext = network.cleartext_warnings(list(profiles.values()) or [default], egress)
    return Config(
        listen=listen,
        default_profile=default,
        profiles=profiles,
        refresh_margin=parsed["refresh_margin"],
        replay_body_limit=int(parsed["replay_body_limit"]),
        replay_memory=int(parsed["replay_memory"]),
        pool_size=parsed["pool_size"],
        timeouts=Timeouts(**{name: parsed[f"timeouts.{name}"] for name in asdict(Timeouts())}),
        log_level=parsed["log_level"],
        log_format=parsed["log_format"],
        access=access,
        policy=_policy(parsed, listen, access),
        max_connections=parsed["max_connections"],
        max_connections_per_address=parsed.get("max_connections_per_address"),
        min_request_rate=parsed["min_request_rate"],
        min_request_rate_window=parsed["min_request_rate_window"],
        shutdown_delay=parsed["shutdown_delay"],
        rate_limits=RateLimits(
            enabled=parsed["rate_limits.enabled"],
            max_wait=parsed["rate_limits.max_wait"],
            window=parsed["rate_limits.window"],
            limits={name: parsed[f"rate_limits.{name}"] for name in RATE_LIMITS},
            retry_after_cap=parsed["retry_after_cap"],
        ),
        cache=CacheSettings(
            enabled=parsed["cache.enabled"],
            ttls={name: parsed[f"cache.{name}"] for name in DEFAULT_TTLS},
        ),
        egress=egress,
        trust=trust,
        object_relay=parsed["object_relay"],
        relay_hosts=parsed.get("relay_hosts") or (),
        shared_state=shared_state,
        warnings=(*warnings, *reader.warnings, *cleartext),
        watched_files=tuple(dict.fromkeys([*([str(path)] if path else []), *reader.files])),
    )
